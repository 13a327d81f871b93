"""Choosing the SSL-GAN's kept pass on validation images (``select_metric: image_auc``): the
validation it gets, and the settings it refuses before any training."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from retinassl.data.patch_bank import LabelledPatches, PatchBank
from retinassl.errors import ConfigError
from retinassl.io.rundir import RunDir
from retinassl.jobs.patch_config import LearnerConfig
from retinassl.jobs.patch_training import _validation, train_patch_classifier


def bank(n_images: int = 4) -> PatchBank:
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(rng.integers(0, 256, (n_images * 64, 3, 32, 32), dtype=np.uint8))
    labels = np.zeros(n_images * 64, dtype=np.int64)
    return PatchBank(windows, torch.full((n_images, 3), 1 / 255.0), torch.zeros(n_images, 3), labels,
                     np.arange(n_images), 8, 32, 0)


def learner(**overrides) -> LearnerConfig:
    method = {"name": "ssl-gan", "generator_channels": [8, 8, 4, 4], "latent_dim": 8,
              "select_on_validation": True, "select_metric": "image_auc"}
    return LearnerConfig(method=method, model={"arch": "convnet", "kwargs": {"width": 4}},
                         val_patches=256, engine={"max_steps": 1, "batch_size": 8}, **overrides)


def data(image_labels: list[int]) -> SimpleNamespace:
    """The parts of PatchData the validation reads: the validation bank and the images' labels."""
    val = np.arange(len(image_labels))
    return SimpleNamespace(val=val, bank=lambda split, p, margin: bank(len(image_labels)),
                           labels=lambda rows: np.asarray(image_labels)[rows])


def test_image_selection_scores_every_validation_patch_with_the_images_labels() -> None:
    val = _validation(data([0, 1, 0, 1]), learner(), seed=0)
    assert isinstance(val, LabelledPatches) and len(val) == 256    # every patch, no random subset
    items = [val[i] for i in (0, 64, 191)]                         # the cells' images and their labels
    assert [(it["image_index"], it["image_label"]) for it in items] == [(0, 0), (1, 1), (2, 0)]


def test_image_selection_refuses_validation_images_of_one_class() -> None:
    with pytest.raises(ConfigError, match="both classes"):
        _validation(data([1, 1, 1, 1]), learner(), seed=0)


def test_image_selection_refuses_another_image_score_rule() -> None:
    with pytest.raises(ConfigError, match="sum rule"):
        _validation(data([0, 1, 0, 1]), learner(image_score="tissue"), seed=0)


def test_image_selection_refuses_patches_that_do_not_know_their_image(tmp_path: Path) -> None:
    train = LabelledPatches(bank(2))
    with pytest.raises(ConfigError, match="know their image"):
        train_patch_classifier(learner(), train, grid=8, seed=0, run=RunDir(tmp_path), val=LabelledPatches(bank(2)))

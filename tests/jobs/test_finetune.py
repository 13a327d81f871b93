"""Fine-tuning: validation carved from the labelled subset, early stopping, saved classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from retinassl.config import EngineConfig, ModelConfig
from retinassl.data.cache import PreparedData
from retinassl.data.splits import carve_validation
from retinassl.jobs.finetune import (FinetuneConfig, finetune, load_classifier,
                                         predict, save_classifier)
from retinassl.metrics.tasks import TaskSpec

REFERABLE = TaskSpec(name="referable", label="dr_grade", positive_from=2)


def test_carve_validation_stratified_grouped_or_none() -> None:
    strata = np.array([0] * 10 + [1] * 10)
    groups = [f"p{i // 2}" for i in range(20)]  # two images per patient
    fit, val = carve_validation(strata, groups, 0.2, seed=0)
    assert sorted(np.r_[fit, val]) == list(range(20))
    assert set(strata[val]) == {0, 1} and len(val) == 4            # one patient (2 images) per class
    assert not {groups[i] for i in fit} & {groups[i] for i in val}  # patients never split
    assert np.array_equal(val, carve_validation(strata, groups, 0.2, seed=0)[1])
    # one example of a class: it stays in training; the other class alone cannot validate
    fit, val = carve_validation(np.array([0, 0, 0, 1]), None, 0.5, seed=0)
    assert len(val) == 0 and len(fit) == 4
    # a singleton class stays in the fitted part, the others still validate
    fit, val = carve_validation(np.array([0, 0, 1, 1, 2]), None, 0.5, seed=1)
    assert 4 in fit and set(np.array([0, 0, 1, 1, 2])[val]) == {0, 1}


def test_finetune_early_stops_without_checkpoints(tiny_prepared: PreparedData, tmp_path: Path) -> None:
    split = tiny_prepared.manifest.frame["split"].to_numpy()
    train, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    model = ModelConfig(arch="convnet", kwargs={"width": 8})
    # lr 0: the validation loss never improves after the first validation -> stop after `patience`
    config = FinetuneConfig(lr=1e-12, epochs=50, min_steps=1, max_steps=200, val_every_steps=1,
                            patience=2, augment="none")
    engine = EngineConfig(batch_size=16, checkpoint_every_n_steps=-1, precision="32")
    result = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / "w", seed=0)
    per_epoch = (len(train) - len(result.val_rows)) // 16
    assert len(result.val_rows) > 0 and result.steps < 50 * per_epoch
    assert result.steps <= 4 * per_epoch
    assert not list((tmp_path / "w" / "checkpoints").glob("step-*.json"))
    assert result.scores.shape == (len(test),) and np.all((result.scores >= 0) & (result.scores <= 1))
    # a saved classifier predicts exactly what the trained one does
    save_classifier(tmp_path / "model", result.method, arch="convnet", kwargs={"width": 8},
                    preprocess=tiny_prepared.config.model_dump(), task=REFERABLE)
    method, task, _ = load_classifier(tmp_path / "model")
    assert task == REFERABLE
    np.testing.assert_allclose(predict(method, tiny_prepared, test), result.scores, atol=1e-6)
    # the same seed gives the same scratch initialisation (not the global RNG state)
    torch.manual_seed(123)
    again = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / "w2", seed=0)
    np.testing.assert_allclose(again.scores, result.scores, atol=1e-6)

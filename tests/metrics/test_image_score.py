"""Image scores from patch logits: the paper's sum and the ``tissue`` mean over the cells wholly
inside the field of view, computed by hand; a patch classifier carries its rule into every score."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from retinassl.data.cache import Cache
from retinassl.data.manifest import Manifest
from retinassl.data.patch_bank import build_patch_bank
from retinassl.data.preprocess import PreprocessConfig
from retinassl.errors import ConfigError
from retinassl.jobs.patch_evaluation import evaluate_bank, score_images
from retinassl.data.fov_scale import FOV_KEY
from retinassl.jobs.predict import ImageScorer, predict
from retinassl.metrics.image_score import image_scores
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.models.registry import build_encoder


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_sum_and_tissue_scores_by_hand() -> None:
    logits = np.array([[0.0, 2.0, -1.0, 3.0],
                       [1.0, 1.0, 5.0, -4.0]])
    fov = np.array([[1.0, 0.995, 0.5, 0.0],       # two tissue cells, a rim cell, a border cell
                    [0.2, 0.9, 0.895, 0.0]])      # no tissue cell: those within 99 % of the largest share
    p = _sigmoid(logits)
    assert image_scores(logits) == pytest.approx(p.sum(axis=1))
    assert image_scores(logits, "tissue", fov) == pytest.approx([(p[0, 0] + p[0, 1]) / 2, (p[1, 1] + p[1, 2]) / 2])
    # border and rim cells do not move the tissue score; they move the sum
    moved = logits.copy()
    moved[0, 2:] = [9.0, 9.0]
    assert image_scores(moved, "tissue", fov)[0] == pytest.approx(image_scores(logits, "tissue", fov)[0])
    assert image_scores(moved)[0] > image_scores(logits)[0] + 0.5
    with pytest.raises(ValueError, match="field-of-view fraction"):
        image_scores(logits, "tissue")
    with pytest.raises(ValueError, match="expected one of sum, tissue"):
        image_scores(logits, "max", fov)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected \(2, 4\)"):
        image_scores(logits, "tissue", fov.T)
    assert image_scores(logits, "tissue", fov.ravel()) == pytest.approx(image_scores(logits, "tissue", fov))
    encoder = build_encoder("convnet", width=4)
    with pytest.raises(ConfigError, match="image_score 'max'"):
        PatchClassifier(encoder, nn.Linear(encoder.num_features, 1), "tanh", 32, 8, "max")  # type: ignore[arg-type]


def _disc_images(folder: Path, n: int = 3, size: int = 256) -> Manifest:
    """Bright discs of different radii on black (fields of view of different sizes)."""
    from PIL import Image

    yy, xx = np.mgrid[:size, :size]
    records = []
    for i in range(n):
        radius = size * (0.5 - 0.06 * i)
        rng = np.random.default_rng(i)
        pixels = rng.integers(90, 200, size=(size, size, 3)).astype(np.uint8)
        pixels[(yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 > radius ** 2] = 0
        Image.fromarray(pixels).save(folder / f"im{i}.png")
        records.append({"id": f"im{i}", "image": f"im{i}.png", "label": i % 2})
    return Manifest.from_records(records, root=folder, name="discs")


def test_a_tissue_classifier_scores_its_wholly_inside_cells(tmp_path: Path) -> None:
    """evaluate_bank, score_images (predict, external sets) and a saved and reloaded classifier
    give the mean probability over the cells lying >= 99 % inside each image's own FOV mask."""
    manifest = _disc_images(tmp_path)
    config = PreprocessConfig(size=256, crop_fov=False)
    prepared = Cache(tmp_path / "cache").prepare(manifest, config)
    torch.manual_seed(0)
    encoder = build_encoder("convnet", width=4)
    classifier = PatchClassifier(encoder, nn.Linear(encoder.num_features, 1), "tanh", 32, 8, "tissue").eval()
    bank = build_patch_bank(prepared, [0, 1, 2], 8, 32, 0, labelled=False)
    bank = dataclasses.replace(bank, labels=np.arange(3 * 64) % 2)    # any patch labels (no masks here)
    metrics, table = evaluate_bank(classifier, bank, prepared, np.array([0, 1, 0]), np.array(["a", "b", "c"]),
                                   localisation=False)
    logits = table[[f"patch_{j:02d}" for j in range(64)]].to_numpy(float)
    expected = []
    for row, image_logits in zip(range(3), logits):
        fov = np.asarray(prepared.entries[row].fov(), dtype=float).reshape(8, 32, 8, 32).mean(axis=(1, 3)).ravel()
        assert 0 < (fov >= 0.99).sum() < 64                       # the discs leave border cells
        expected.append(_sigmoid(image_logits[fov >= 0.99]).mean())
    assert table["score"].to_numpy() == pytest.approx(expected)
    scores, again = score_images(classifier, prepared, [0, 1, 2], batch_size=2)
    assert scores == pytest.approx(expected) and np.allclose(again, logits, atol=1e-6)
    classifier.save(tmp_path / "saved", arch="convnet", kwargs={"width": 4}, method="supervised", preprocess={})
    loaded, meta = PatchClassifier.load(tmp_path / "saved")
    assert loaded.image_score == "tissue" and meta["patch_classifier"]["image_score"] == "tissue"
    assert score_images(loaded, prepared, [0, 1, 2])[0] == pytest.approx(expected)
    scores, table = ImageScorer.load(tmp_path / "saved").score(prepared, np.array([0, 1, 2]))   # predict's path
    assert scores == pytest.approx(expected) and table["score"].to_numpy() == pytest.approx(expected)
    # `retinassl predict` end to end, with a recorded FOV diameter these images do not match (scale
    # matching would pick a size the 8x8 grid cannot cut): the patch classifier keeps its size
    classifier.save(tmp_path / "recorded", arch="convnet", kwargs={"width": 4}, method="supervised",
                    preprocess=config.model_dump(mode="json"), extra={FOV_KEY: 150.0})
    out = predict(tmp_path / "recorded", manifest, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert pd.read_csv(out)["score"].to_numpy() == pytest.approx(expected, rel=1e-5)
    # the paper's rule on the same logits: the sum over all 64 cells
    paper = PatchClassifier(encoder, classifier.head, "tanh", 32, 8).eval()
    assert score_images(paper, prepared, [0, 1, 2])[0] == pytest.approx(_sigmoid(logits).sum(axis=1), rel=1e-5)

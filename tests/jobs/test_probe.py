"""Linear probe: features extracted once and reused, the frozen-backbone assertion, the probe itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from retinassl.data.cache import PreparedData
from retinassl.jobs import features as features_module
from retinassl.jobs.features import extract_features, state_hash
from retinassl.jobs.probe import BackboneChanged, assert_frozen, fit_probe, linear_probe
from retinassl.metrics.tasks import TaskSpec
from retinassl.models import Encoder, build_encoder

REFERABLE = TaskSpec(name="referable", label="dr_grade", positive_from=2)


def _encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return build_encoder("convnet", width=8)


def _rows(prepared: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    split = prepared.manifest.frame["split"].to_numpy()
    return np.flatnonzero(split != "test"), np.flatnonzero(split == "test")


def test_second_probe_extracts_nothing(tiny_prepared: PreparedData, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = _encoder()
    train, test = _rows(tiny_prepared)
    first = linear_probe(encoder, tiny_prepared, train, test, REFERABLE, cache_dir=tmp_path)
    assert first.features.extracted == len(tiny_prepared)
    assert first.features.path.is_file()
    calls = []
    monkeypatch.setattr(features_module, "embed", lambda *a, **k: calls.append(1))
    # another task, other rows, another seed: the same features, read from the cache
    grade = TaskSpec(name="grade", kind="multiclass", label="dr_grade")
    again = linear_probe(encoder, tiny_prepared, train[:10], test, grade, seed=3, cache_dir=tmp_path)
    assert again.features.extracted == 0 and not calls
    assert np.array_equal(again.features.values, first.features.values)
    assert again.scores.shape == (len(test), 5)
    np.testing.assert_allclose(again.scores.sum(axis=1), 1.0, atol=1e-6)
    # other weights or other preprocessing: a different key
    assert extract_features(_encoder(1), tiny_prepared, tmp_path).key != first.features.key
    assert len(calls) == 1


def test_cache_key_ignores_labels_but_not_pixels(tiny_prepared: PreparedData, tmp_path: Path) -> None:
    encoder = _encoder()
    key = extract_features(encoder, tiny_prepared, tmp_path).key
    relabelled = tiny_prepared.subset(np.arange(len(tiny_prepared)))
    relabelled.manifest.frame["dr_grade"] = 0
    assert extract_features(encoder, relabelled, tmp_path).key == key
    fewer = tiny_prepared.subset(np.arange(len(tiny_prepared) - 1))
    assert extract_features(encoder, fewer, tmp_path).key != key


class _TrainModeEncoder(Encoder):
    """An encoder whose batch norm is put in train mode by every forward (a buggy 'frozen' probe)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.num_features, self.feature_channels, self.reductions, self.in_channels = 4, (4,), (1,), 3

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.bn.train()
        return [self.bn(self.conv(x))]


def test_frozen_assertion_catches_a_modified_backbone(tiny_prepared: PreparedData, tmp_path: Path) -> None:
    train, test = _rows(tiny_prepared)
    with pytest.raises(BackboneChanged, match="bn.running_mean"):
        linear_probe(_TrainModeEncoder(), tiny_prepared, train, test, REFERABLE, cache_dir=tmp_path)
    encoder = _encoder()
    with pytest.raises(BackboneChanged, match="changed"):
        with assert_frozen(encoder):  # one optimiser step on the backbone
            opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
            encoder(torch.randn(2, 3, 32, 32)).sum().backward()
            opt.step()
    before = state_hash(encoder)
    with assert_frozen(encoder):  # a correct probe leaves every tensor as it was
        linear_probe(encoder, tiny_prepared, train, test, REFERABLE, cache_dir=tmp_path)
    assert state_hash(encoder) == before


def test_fit_probe_separable_and_degenerate() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 8)) + y[:, None] * 3.0
    scores, cs = fit_probe(x[::2], y[::2], x[1::2], REFERABLE, 1, seed=0)
    assert scores.shape == (30,) and cs[0] in (0.001, 0.01, 0.1, 1.0, 10.0)  # C from the grid
    from retinassl.metrics.classification import roc_auc

    assert roc_auc(y[1::2], scores) > 0.99
    # one class in the labelled subset: a constant prediction, no crash
    scores, cs = fit_probe(x[:5], np.zeros(5, dtype=int), x[5:], REFERABLE, 1)
    assert np.all(scores == 0) and np.isnan(cs[0])
    multi = TaskSpec(name="m", kind="multilabel", label="disease_")
    labels = np.stack([y, 1 - y, np.zeros(60, dtype=int)], axis=1)
    scores, cs = fit_probe(x, labels, x, multi, 3)
    assert scores.shape == (60, 3) and np.isnan(cs[2])


def test_the_probe_chooses_c_on_folds_of_patients_never_validating_on_kept_out_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """C is chosen by inner cross-validation over the training rows' patients that never validates on
    the rows kept out (images whose labels the encoder's pretraining read); with too few other rows,
    the default C; ``inner_cv: rows`` ignores both, as runs before it did."""
    from retinassl.jobs import probe as probe_module
    from retinassl.jobs.probe import ProbeConfig

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 20)) + y[:, None] * 0.4
    patients = np.array([f"p{i // 2}" for i in range(60)])
    kept = np.zeros(60, dtype=bool)
    kept[[1, 2, 40, 41, 50]] = True
    config = ProbeConfig(c_grid=[0.001, 0.01], c_default=5.0)
    real = probe_module.inner_folds
    validated: list[np.ndarray] = []

    def recording(*args, **kwargs):
        folds = real(*args, **kwargs)
        validated.extend(val for _, val in folds or [])
        return folds

    monkeypatch.setattr(probe_module, "inner_folds", recording)
    _, cs = fit_probe(x, y, x[:3], REFERABLE, 1, config, seed=0, groups=patients, always_fitted=kept)
    assert cs[0] in config.c_grid and validated
    blocked = np.isin(patients, patients[kept])
    seen = np.concatenate(validated)
    assert not blocked[seen].any() and not (set(patients[seen]) & set(patients[blocked]))
    # nearly every row kept out: too few others for 3 folds, so the default C
    most = np.ones(60, dtype=bool)
    most[[0, 1, 30, 31]] = False
    _, cs = fit_probe(x, y, x[:3], REFERABLE, 1, config, seed=0, groups=patients, always_fitted=most)
    assert cs == [5.0]
    # inner_cv: rows: the marks and patients ignored, the C of folds over the rows
    rows = config.model_copy(update={"inner_cv": "rows"})
    assert fit_probe(x, y, x[:3], REFERABLE, 1, rows, seed=0, groups=patients, always_fitted=most)[1] == \
        fit_probe(x, y, x[:3], REFERABLE, 1, rows, seed=0)[1]
    assert fit_probe(x, y, x[:3], REFERABLE, 1, rows, seed=0)[1][0] in config.c_grid

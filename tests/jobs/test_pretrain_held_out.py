"""Supervised pretraining with ``val_fraction``: a held-out share of the labelled pool's patients checks
the source task (validation AUC recorded, the best epoch's encoder saved); patients never straddle
the two parts; self-supervised runs refuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinassl.config import load_config
from retinassl.data.cache import Cache
from retinassl.errors import ConfigError
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.jobs.pretrain import PretrainConfig, held_out, load_pool, run_pretrain
from retinassl.metrics.classification import roc_auc

TINY = ["data.options.n_images=24", "data.options.size=64", "preprocess.size=32", "model.arch=convnet",
        "model.kwargs={width: 8}", "engine.batch_size=8", "engine.max_epochs=2", "engine.log_every_n_steps=1",
        "engine.checkpoint_every_n_steps=-1", "engine.precision='32'", "splits=[train, val, test]"]


def _config(tmp_path: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain-supervised",
                       TINY + [f"data.options.out_dir={tmp_path / 'data'}", *extra])


def test_held_out_patients_are_disjoint_stratified_and_seeded(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    config = _config(tmp_path, "val_fraction=0.25")
    prepared = Cache().prepare(load_pool(config), config.preprocess, workers=1, mask_columns=[])
    fit, val = held_out(prepared, config)
    patients = prepared.manifest.frame["patient"].astype(str).to_numpy()
    labels = prepared.manifest.labels("abnormal")
    fit_ids = {int(i) for i in range(len(fit))}
    assert len(fit) + len(val) == len(prepared) and fit_ids
    fit_patients = set(fit.prepared.manifest.frame["patient"].astype(str))
    val_patients = set(val.prepared.manifest.frame["patient"].astype(str))
    assert not fit_patients & val_patients
    assert set(np.unique(val.labels).tolist()) == {0, 1}  # both classes held out
    # about a quarter of each class's patients (at least one)
    for c in (0, 1):
        class_patients = set(patients[labels == c])
        held = len(class_patients & val_patients)
        assert held == max(1, round(0.25 * len(class_patients)))
    again, _ = held_out(prepared, config)
    assert again.prepared.manifest.frame["id"].tolist() == fit.prepared.manifest.frame["id"].tolist()


def test_run_records_the_held_out_source_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    config = _config(tmp_path, "val_fraction=0.25")
    run = RunDir.create(tmp_path / "runs", "held-out")
    run_pretrain(config, run)
    results = read_results(run.results_file)
    metrics = dict(zip(results["metric"], results["value"]))
    assert {"val_auc", "val_loss", "val_epoch"} <= set(metrics)
    history = pd.read_csv(run.path / "logs" / "csv" / "metrics.csv")
    aucs = history["val/auc"].dropna().to_numpy()
    assert len(aucs) == 2  # one validation per epoch
    assert metrics["val_auc"] == pytest.approx(aucs.max())  # the best epoch is the one recorded
    assert 0.0 <= metrics["val_auc"] <= 1.0 and roc_auc(np.array([0, 1]), np.array([0.0, 1.0])) == 1.0


def test_self_supervised_refuses_val_fraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    config = _config(tmp_path, "val_fraction=0.25", "label=null", "method={name: rotation}")
    prepared = Cache().prepare(load_pool(config), config.preprocess, workers=1, mask_columns=[])
    with pytest.raises(ConfigError, match="needs supervised pretraining"):
        held_out(prepared, config)


def test_regression_pretraining_reports_its_error_against_the_mean(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``method.task: regression`` on a real-valued column (e.g. an eye's OCT thickness): the head
    learns the standardised target; the held-out error is reported beside that of always predicting
    the fitted rows' mean, which is recomputed here from the manifest."""
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    config = _config(tmp_path, "val_fraction=0.25", "label=thickness",
                     "method={name: supervised, task: regression, lr: 0.002, augment: none}")
    pool = load_pool(_config(tmp_path))
    rng = np.random.default_rng(0)
    thickness = 250.0 + 60.0 * pool.labels("abnormal") + rng.normal(0, 5, len(pool))
    pool = type(pool)(pool.frame.assign(thickness=thickness), pool.root, pool.name)
    run = RunDir.create(tmp_path / "runs", "regression")
    run_pretrain(config, run, manifest=pool)
    metrics = dict(zip(*[read_results(run.results_file)[c] for c in ("metric", "value")]))
    # the reference: the same held-out split, the mean of the fitted rows' targets
    prepared = Cache().prepare(pool, config.preprocess, workers=1, mask_columns=[])
    fit, val = held_out(prepared, config)
    expected = np.abs(val.labels.astype(np.float64) - fit.labels.astype(np.float64).mean()).mean()
    assert metrics["val_mae_of_mean"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val_skill"] == pytest.approx(1 - metrics["val_mae"] / metrics["val_mae_of_mean"], rel=1e-6)
    assert fit.labels.dtype == np.float32 and len(set(np.round(fit.labels, 3))) > 2  # real values, not classes


def test_a_regression_target_needs_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retinassl.errors import DataError
    from retinassl.data.datasets import ImageDataset

    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    config = _config(tmp_path)
    pool = load_pool(config)
    values = np.arange(len(pool), dtype=float)
    values[3] = np.nan
    pool = type(pool)(pool.frame.assign(thickness=values), pool.root, pool.name)
    prepared = Cache().prepare(pool, config.preprocess, workers=1, mask_columns=[])
    with pytest.raises(DataError, match="thickness is missing or not a number") as info:
        ImageDataset(prepared, "thickness", regression=True)
    assert "row 3" in str(info.value) or info.value.row == 3

"""`evaluate_on` in the transfer sweep: every cell's model also scores an external dataset; the
probe's in-domain scores are those of a probe scoring the test images alone, its external scores
those of the same probe on the external features alone; the fine-tuned model's external scores are
what `retinassl predict` gives with the saved classifier; the in-domain vs external table carries
the comparison's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from retinassl.data.manifest import Manifest
from retinassl.data.synthetic import generate_dataset
from retinassl.errors import ConfigError
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.jobs.features import extract_features
from retinassl.jobs.predict import predict
from retinassl.jobs.probe import fit_probe
from retinassl.models.initialize import seeded_initial_encoder
from retinassl.sweeps.transfer import TransferGrid, run_transfer
from retinassl.sweeps.transfer_config import resolve_config


def _config(root: Path, external: Path, cache: Path, **extra) -> dict:
    return {
        "kind": "transfer", "name": "ext", "seed": 0,
        "data": {"source": "manifest", "manifest": str(root / "data" / "manifest.csv"), "cache_dir": str(cache)},
        "preprocess": {"size": 32},
        "model": {"arch": "convnet", "kwargs": {"width": 8}},
        "inits": [{"name": "scratch"}],
        "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2}],
        "fractions": [1.0], "seeds": [0],
        "probe": {"c_grid": [1.0]},
        "finetune": {"epochs": 1, "min_steps": 1, "max_steps": 2, "patience": 0},
        "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "precision": "32"},
        "explain": {"tsne": False, "gradcam": 0},
        "evaluate_on": [{"name": "other", "data": {"source": "manifest", "manifest": str(external / "manifest.csv")},
                         "label": "dr_grade>=2"}],
        **extra}


def test_config_checks_of_evaluate_on(tiny_root: Path, tmp_path: Path) -> None:
    data = _config(tiny_root, tmp_path, tmp_path / "cache")
    with pytest.raises(ConfigError, match="not one of the tasks"):
        resolve_config({**data, "evaluate_on": [{**data["evaluate_on"][0], "task": "grade"}]}, None)
    with pytest.raises(ConfigError, match="unique"):
        resolve_config({**data, "evaluate_on": data["evaluate_on"] * 2}, None)
    with pytest.raises(ConfigError, match="binary score"):
        resolve_config({**data, "tasks": [{"name": "grade", "kind": "multiclass", "label": "dr_grade"}]}, None)


@pytest.mark.slow
def test_sweep_scores_the_external_dataset_in_every_cell(tiny_root: Path, tmp_path: Path) -> None:
    external = tmp_path / "external"
    generate_dataset(external, n_images=24, size=64, prevalence=0.5, seed=11)
    config = resolve_config(_config(tiny_root, external, tmp_path / "cache"), None)
    run = RunDir.create(tmp_path / "runs", "ext")
    run_transfer(config, run)

    results = read_results(run.results_file)
    other = results[results["task"] == "referable@other"]
    ext_manifest = Manifest.load(external / "manifest.csv")
    truth = dict(zip(ext_manifest.frame["id"].astype(str), (ext_manifest.labels("dr_grade") >= 2).astype(int)))
    for protocol in ("probe", "finetune"):
        rows = dict(zip(other.loc[other["protocol"] == protocol, "metric"], other.loc[other["protocol"] == protocol, "value"]))
        pred = pd.read_csv(run.path / "predictions" / "transfer" / "referable@other" / protocol / "scratch" / "f1-s0.csv",
                           dtype={"id": str})
        assert rows["n_test"] == len(pred) == len(ext_manifest)
        assert pred["label"].tolist() == [truth[i] for i in pred["id"]]                 # the mapping, per image
        assert rows["auc"] == pytest.approx(roc_auc_score(pred["label"], pred["score"]))

    # the probe: in-domain scores as without the external set, external scores of the same probe
    grid = TransferGrid(config.model_dump(mode="json"), run)
    prepared = grid.downstream()
    cell = next(c for p in grid.plan(prepared.manifest).values() for c in p["cells"])
    task = config.tasks[0]
    encoder = seeded_initial_encoder(config.model.model_copy(update={"init": "scratch"}), config.seed).encoder
    inside = extract_features(encoder, prepared, config.data.cache_dir).values
    outside = extract_features(encoder, grid.externals()[0].prepared, config.data.cache_dir).values
    y = task.targets(prepared.manifest)[cell["rows"]]
    alone, _ = fit_probe(inside[cell["rows"]], y, inside[cell["test"]], task, 1, config.probe, 0)
    theirs, _ = fit_probe(inside[cell["rows"]], y, outside, task, 1, config.probe, 0)
    probe_in = pd.read_csv(run.path / "predictions" / "transfer" / "referable" / "probe" / "scratch" / "f1-s0.csv")
    probe_out = pd.read_csv(run.path / "predictions" / "transfer" / "referable@other" / "probe" / "scratch" / "f1-s0.csv")
    np.testing.assert_allclose(probe_in["score"], alone, atol=1e-12)
    np.testing.assert_allclose(probe_out["score"], theirs, atol=1e-12)

    # fine-tuning: the saved classifier of this cell, applied by `predict`, gives the same external scores
    out = predict(run.path / "models" / "referable-scratch", ext_manifest, tmp_path / "predict",
                  cache_dir=config.data.cache_dir)
    applied = pd.read_csv(out, dtype={"id": str}).set_index("id")["score"]
    sweep = pd.read_csv(run.path / "predictions" / "transfer" / "referable@other" / "finetune" / "scratch" / "f1-s0.csv",
                        dtype={"id": str}).set_index("id")["score"]
    np.testing.assert_allclose(applied.loc[sweep.index], sweep, atol=1e-5)

    # one table: in-domain beside external, the comparison's numbers
    table = pd.read_csv(run.path / "external.csv")
    comparison = pd.read_csv(run.path / "comparison.csv")
    for protocol in ("probe", "finetune"):
        row = table[(table["protocol"] == protocol) & (table["init"] == "scratch")].iloc[0]
        mean = comparison.set_index(["task", "protocol", "init", "metric"])["mean"]
        assert row["in_domain"] == pytest.approx(mean[("referable", protocol, "scratch", "auc")])
        assert row["other"] == pytest.approx(mean[("referable@other", protocol, "scratch", "auc")])
    assert "| scratch | 1 |" in (run.path / "external.md").read_text()


def test_external_copies_of_downstream_images_are_warned(tiny_root: Path, tmp_path: Path, caplog) -> None:
    import logging
    import shutil

    external = tmp_path / "external"
    generate_dataset(external, n_images=6, size=64, prevalence=0.5, seed=12)
    downstream = Manifest.load(tiny_root / "data" / "manifest.csv")
    copied = downstream.frame.iloc[3]
    shutil.copy(downstream.path(3), external / "copy.png")
    frame = pd.read_csv(external / "manifest.csv", dtype=str)
    row = frame.iloc[0].copy()
    row["id"], row["image"], row["dr_grade"] = "copy", "copy.png", str(copied["dr_grade"])
    pd.concat([frame, row.to_frame().T]).to_csv(external / "manifest.csv", index=False)
    config = resolve_config(_config(tiny_root, external, tmp_path / "cache"), None)
    with caplog.at_level(logging.WARNING, logger="retinassl"):
        TransferGrid(config.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "ext")).prepare()
    overlap = pd.read_csv(next((tmp_path / "runs").iterdir()) / "data" / "external-other-overlap.csv", dtype=str)
    assert overlap[["external_id", "in", "id"]].values.tolist() == [["copy", "downstream", str(copied["id"])]]
    assert "byte-identical copies of downstream images" in caplog.text

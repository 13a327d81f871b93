"""`retinassl predict` and `retinassl evaluate external`: a trained model applied to new images
reproduces, image for image, the scores its training run wrote for its own test split; thresholds
and calibration travel with the model; bad files are named or skipped without losing rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinassl.data.manifest import Manifest
from retinassl.errors import ConfigError, DataError
from retinassl.io.rundir import RunDir
from retinassl.jobs.external import evaluate_external
from retinassl.jobs.predict import input_manifest, mapped_labels, predict
from retinassl.metrics.classification import expected_calibration_error, operating_point


def _retinassl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from retinassl.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_operating_point_and_calibration_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
    op = operating_point(labels, scores, sensitivity=0.9)
    # thresholds 0.8: sens 2/3, spec 1 (J = 0.667); 0.3: sens 1, spec 1/3 (J = 0.333)
    assert op["threshold"] == 0.8 and op["sensitivity"] == pytest.approx(2 / 3) and op["specificity"] == 1
    assert op["threshold_at_sensitivity"] == 0.3 and op["specificity_at_sensitivity"] == pytest.approx(1 / 3)
    # ECE with 2 bins: [0, 0.5): 4 images, rate 1/4, mean 0.2875; [0.5, 1]: 2 images, rate 1, mean 0.85
    ece = expected_calibration_error(labels, scores, bins=2)
    assert ece == pytest.approx(4 / 6 * abs(0.25 - 0.2875) + 2 / 6 * abs(1 - 0.85))


def test_label_mappings(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "image": ["a.png"] * 4, "patient": list("abcd"),
                          "eye": "", "split": "", "dr_stage": [0, 1, 2, None], "dr_any": [0, 1, 1, None]})
    manifest = Manifest(frame, tmp_path, "m")
    labels, has = mapped_labels(manifest, "dr_stage>=2")
    assert labels[has].tolist() == [0, 0, 1] and has.tolist() == [True, True, True, False]
    labels, has = mapped_labels(manifest, "dr_any")
    assert labels[has].tolist() == [0, 1, 1]
    with pytest.raises(ConfigError, match="no column 'grade'"):
        mapped_labels(manifest, "grade>=1")
    with pytest.raises(ConfigError, match="not 0/1"):
        mapped_labels(manifest, "dr_stage")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny whole-image DR classifier trained by `retinassl train` on synthetic eyes."""
    tmp = tmp_path_factory.mktemp("train")
    proc = _retinassl("train", "demo", "--runs-dir", str(tmp / "runs"), "data.options.n_images=24",
                      "data.options.size=64", "data.options.prevalence=0.5", "preprocess.size=64",
                      "task.kind=image", "model.kwargs.channels=[4,8,8]", "engine.max_epochs=2",
                      "engine.batch_size=8", f"data.cache_dir={tmp / 'cache'}",
                      "data.options.out_dir=" + str(tmp / "syn"), env={"RETINASSL_CACHE": str(tmp / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next((tmp / "runs").iterdir())


@pytest.mark.slow
def test_predict_reproduces_the_training_runs_test_scores(trained: Path, tmp_path: Path) -> None:
    meta = json.loads((trained / "classifier" / "model.json").read_text())
    assert meta["kind"] == "classifier" and meta["preprocess"]["size"] == 64
    op = meta["operating_point"]                               # chosen on the run's validation images
    assert 0 <= op["threshold"] <= 1 and op["n_val"] > 0 and "ece" in meta["calibration"]
    assert meta["precision"] == json.loads((trained / "run.json").read_text())["precision"]  # what it trained with
    test = pd.read_csv(next((trained / "predictions").glob("*.csv")))
    manifest = Manifest.load(trained / "manifest.csv")
    rows = manifest.frame["id"].astype(str).isin(test["id"].astype(str)).to_numpy()
    manifest.subset(rows).save(tmp_path / "test.csv")
    proc = _retinassl("predict", str(trained), str(tmp_path / "test.csv"), "--out", str(tmp_path / "out"),
                      env={"RETINASSL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = pd.read_csv(tmp_path / "out" / "predictions.csv")
    merged = test.merge(out, on="id", suffixes=("_train", "_predict"))
    assert len(merged) == len(test)
    # float32 sums in another memory layout (training leaves the network channels-last): 1e-5
    np.testing.assert_allclose(merged["score_predict"], merged["score_train"], atol=1e-5)
    assert (out["predicted"] == (out["score"] >= op["threshold"]).astype(int)).all()
    # never over earlier predictions
    again = _retinassl("predict", str(trained), str(tmp_path / "test.csv"), "--out", str(tmp_path / "out"))
    assert again.returncode == 2 and "new or empty folder" in again.stderr


@pytest.mark.slow
def test_a_corrupt_file_is_named_or_skipped_without_losing_rows(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    syn = sorted((trained.parent.parent / "syn" / "images").glob("*.png"))[:3]
    for p in syn:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    env = {"RETINASSL_CACHE": str(tmp_path / "cache")}
    proc = _retinassl("predict", str(trained / "classifier"), str(folder), "--out", str(tmp_path / "a"), env=env)
    assert proc.returncode == 2 and "broken.png" in proc.stderr
    assert not (tmp_path / "a" / "predictions.csv").exists()
    proc = _retinassl("predict", str(trained / "classifier"), str(folder / "*.png"), "--out", str(tmp_path / "b"),
                      "--skip-bad", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = pd.read_csv(tmp_path / "b" / "predictions.csv")
    assert len(out) == 4 and out.loc[out["id"] == "broken", "score"].isna().all()
    assert out.loc[out["id"] == "broken", "problem"].notna().all() and out["score"].notna().sum() == 3


@pytest.mark.slow
def test_external_validation_rows_and_paired_delong(trained: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(trained / "manifest.csv")
    run = RunDir.create(tmp_path / "runs", "external")
    table = evaluate_external([trained / "classifier", trained / "classifier"], manifest, "abnormal", run,
                              name="synthetic", n_boot=50)
    values = {(r.init, r.metric): r.value for r in table.itertuples()}
    name = "classifier"                                    # the saved model's folder name
    assert 0 <= values[(name, "auc_lo")] <= values[(name, "auc")] <= values[(name, "auc_hi")] <= 1
    assert {"sensitivity", "specificity", "ece", "n"} <= {m for _, m in values}
    assert values[(name, "n")] == len(manifest)
    assert values[(name, "auc_difference")] == 0                  # a model against itself
    assert (run.predictions / "external-synthetic-classifier.csv").is_file()
    with pytest.raises(ConfigError, match="both"):
        frame = manifest.frame.copy()
        frame["one"] = 1
        evaluate_external([trained / "classifier"], Manifest(frame, manifest.root, "m"), "one", run, name="x")


def test_inputs_missing_or_empty_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        input_manifest([str(tmp_path / "nothing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        input_manifest([str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="matches no image"):
        input_manifest([str(tmp_path / "*.jpg")])
    with pytest.raises(ConfigError, match="--out must be a new or empty folder"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        predict(tmp_path, Manifest.__new__(Manifest), tmp_path / "full")

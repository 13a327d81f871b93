"""``retinassl semisup train | evaluate | heatmap`` end to end on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from retinassl.cli import app
from retinassl.io.results import read_results

pytestmark = pytest.mark.slow


def test_train_evaluate_heatmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    overrides = [f"runs_dir={tmp_path / 'runs'}", f"data.options.out_dir={tmp_path / 'synthetic'}",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.options.n_images=20", "split.train=10",
                 "split.val=4", "n_labelled=4", "learner.model.kwargs.width=4",
                 "learner.method.generator_channels=[8,8,4,4]", "learner.engine.max_steps=2",
                 "learner.engine.batch_size=16", "learner.method.collapse_every=1", "heatmaps=2",
                 "learner.image_score=tissue"]
    result = runner.invoke(app, ["semisup", "train", "demo-ssl-gan", *overrides])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    meta = json.loads((run / "classifier" / "model.json").read_text())
    assert meta["kind"] == "patch-classifier" and meta["patch_classifier"]["image_score"] == "tissue"
    assert meta["precision"] == json.loads((run / "run.json").read_text())["precision"]  # what it trained with
    # the learner's rule reaches the scores: a mean of probabilities, not a sum over 64 cells
    scores = pd.read_csv(next(run.glob("predictions/*-test.csv")))["score"]
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (run / "report" / "index.html").is_file()
    results = read_results(run / "results.csv")
    assert set(results["metric"]) >= {"patch_auc", "image_auc", "localisation_auc"}
    metrics = json.loads((run / "run.json").read_text())["metrics"]
    assert 0 < metrics["generator_sample_variance_ratio"] < 10      # the GAN's health, reported

    result = runner.invoke(app, ["semisup", "evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "image_auc=" in result.output
    assert len(read_results(run / "results.csv")) == len(results)   # not appended twice

    image = next((tmp_path / "synthetic" / "images").glob("*.png"))
    out = tmp_path / "overlay.png"
    result = runner.invoke(app, ["semisup", "heatmap", str(image), "--checkpoint", str(run),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "image score" in result.output
    result = runner.invoke(app, ["semisup", "heatmap", str(tmp_path / "missing.png"), "--checkpoint",
                                 str(run)])
    assert result.exit_code != 0

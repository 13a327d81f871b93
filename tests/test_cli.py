"""The command line: help a newcomer can follow, a tiny end-to-end `train`, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retinassl.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "demo", "report", "sweep"):
        assert command in result.output


def test_data_list_names_sources_and_encoders() -> None:
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    for word in ("idrid", "drive", "glob", "synthetic", "resnet18", "supervised", "demo"):
        assert word in result.output


def _retinassl(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from retinassl.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                          timeout=600)


@pytest.mark.slow
def test_train_end_to_end_on_tiny_synthetic_data(tmp_path: Path) -> None:
    proc = _retinassl("train", "demo", "--runs-dir", str(tmp_path / "runs"), "data.options.n_images=12",
                      "data.options.size=64", "preprocess.size=64", "task.grid=2", "task.patch_size=32",
                      "model.kwargs.channels=[4,8,8]", "engine.max_epochs=1", "engine.batch_size=64",
                      f"data.cache_dir={tmp_path / 'cache'}", "data.options.out_dir=" + str(tmp_path / "syn"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "runs").iterdir())
    for name in ("config.yaml", "manifest.csv", "results.csv", "encoder/encoder.safetensors",
                 "encoder/encoder.json", "report/index.html"):
        assert (run / name).is_file(), name
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished"
    assert "image_auc" in (run / "results.csv").read_text()
    assert "Patch heatmaps" in (run / "report" / "index.html").read_text()


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  max_epoch: 3\n")
    proc = _retinassl("train", str(bad), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "engine.max_epoch: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _retinassl("data", "inspect", "idrid", "-o", f"root={tmp_path / 'nowhere'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr

"""Divergence through the command line: a supervised run whose loss overflows and a patch GAN whose
generator collapses both stop with exit status 2 and one error line saying what happened, leave the
weights of the last good step (finite), and mark the run failed. The
engine-level NaN guard test is tests/engine/test_engine.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reliability.harness import FAMILIES, assert_clean_failure, only_run, run_cli


def _check_stopped(tmp_path: Path, proc, *needles: str) -> None:
    line = assert_clean_failure(proc, *needles)
    run = only_run(tmp_path / "runs")
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed", status
    weights = load_file(str(run / "checkpoints" / "last-good-weights.safetensors"))
    assert weights and all(torch.isfinite(v.float()).all() for v in weights.values())
    assert "last-good-weights.safetensors" in line or "last-good-weights" in proc.stderr


@pytest.mark.slow
def test_supervised_loss_overflow_stops_with_last_good_weights(tmp_path: Path) -> None:
    spec = FAMILIES["supervised"]
    proc = run_cli(spec.args(tmp_path, tmp_path / "runs") + ["method.lr=1e30"], tmp_path, wrapper=False)
    _check_stopped(tmp_path, proc, "loss became", "training stopped")


@pytest.mark.slow
def test_gan_generator_collapse_stops_with_last_good_weights(tmp_path: Path) -> None:
    spec = FAMILIES["patch-gan"]
    spec.skip_unless_available()
    # every check counts as collapsed: the method reports it after collapse_patience=2 checks
    proc = run_cli(spec.args(tmp_path, tmp_path / "runs") + [
        "learner.method.collapse_ratio=1e12", "learner.method.collapse_every=1",
        "learner.method.collapse_patience=2"], tmp_path, wrapper=False)
    _check_stopped(tmp_path, proc, "collapsed", "training stopped")

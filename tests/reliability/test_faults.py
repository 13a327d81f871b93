"""Faults, through each family's own command: a run SIGKILLed at a random optimizer step (drawn from a
seed) and resumed with ``--resume RUN`` ends bit-identical (weights, metrics, predictions) to an
uninterrupted run with the same seed, which is also the family's "same seed, same numbers" check
through the command line (CPU float32).

One test per family (supervised patch classifier, rotation pretext pretraining, patch SSL-GAN, vessel
U-Net), each running three tiny runs: reference, killed, resumed. The bf16/``engine.deterministic``
checks, which need no subprocess, are in test_determinism.py.
"""

from __future__ import annotations

import json
import signal
import zlib
from pathlib import Path

import pytest

from reliability.harness import FAMILIES, assert_same_run, kill_step, only_run, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kill_resume_and_same_seed_same_numbers(tmp_path: Path, family: str) -> None:
    spec = FAMILIES[family]
    spec.skip_unless_available()
    # reference run
    ref = run_cli(spec.args(tmp_path, tmp_path / "ref"), tmp_path)
    assert ref.returncode == 0, ref.stderr[-4000:]
    ref_run = only_run(tmp_path / "ref")
    # killed at a random step (drawn from a seed per family), then resumed
    step = kill_step(zlib.crc32(family.encode()), 3, spec.steps)
    killed = run_cli(spec.args(tmp_path, tmp_path / "killed"), tmp_path, kill_at=step)
    assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-4000:])
    run = only_run(tmp_path / "killed")
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert list((run / "checkpoints").glob("step-*.json")), "no resumable checkpoint before the kill"
    resumed = run_cli(spec.resume_args(run), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert_same_run(ref_run, run)


@pytest.mark.slow
def test_sigterm_is_recorded_and_the_run_resumes(tmp_path: Path) -> None:
    """SIGTERM (kill, scancel, pre-emption) ends a run cleanly: exit status 143, the run directory
    says why, and --resume finishes it."""
    spec = FAMILIES["supervised"]
    terminated = run_cli(spec.args(tmp_path, tmp_path / "runs"), tmp_path, kill_at=3,
                         env={"RELIABILITY_KILL_SIGNAL": "TERM"})
    assert terminated.returncode == 143, terminated.stderr[-4000:]
    assert "terminated (SIGTERM)" in terminated.stderr and "Traceback" not in terminated.stderr
    run = only_run(tmp_path / "runs")
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and status["error"] == "terminated by SIGTERM"
    resumed = run_cli(spec.resume_args(run), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"

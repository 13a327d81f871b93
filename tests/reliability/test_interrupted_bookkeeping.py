"""Bookkeeping survives interruption (issue 21, item 10): ``logs/csv/metrics.csv`` keeps the rows
logged before a SIGKILL, ``--resume`` keeps them (the steps it repeats after its checkpoint are
written once), and ``train_seconds`` (``pretrain_seconds`` here) counts the earlier part of a resumed run as well.

A rotation pretraining (the harness's tiny one, logging every step) is run once uninterrupted and
once killed before its 6th optimizer step and resumed; the resumed run's metrics.csv holds every
step exactly once with the reference run's losses (the runs are bit-identical)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest

from reliability.harness import FAMILIES, only_run, run_cli


def _train_rows(run: Path) -> pd.DataFrame:
    table = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    loss = [c for c in table.columns if c.startswith("train/") or c.startswith("train_")]
    assert loss, table.columns
    return table.dropna(subset=[loss[0]])[["step", loss[0]]].reset_index(drop=True)


def _checkpoint_seconds(run: Path) -> float:
    """The cumulative training seconds stored in the newest step checkpoint."""
    newest = max((run / "checkpoints").glob("step-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    text = newest.read_text()
    data = json.loads(text)

    def find(obj):
        if isinstance(obj, dict):
            if "retinassl" in obj and isinstance(obj["retinassl"], dict) and "seconds" in obj["retinassl"]:
                return obj["retinassl"]["seconds"]
            for v in obj.values():
                found = find(v)
                if found is not None:
                    return found
        return None

    value = find(data)
    assert value is not None, f"no training seconds in {newest}"
    return float(value)


@pytest.mark.slow
def test_metrics_and_seconds_survive_kill_and_resume(tmp_path: Path) -> None:
    spec = FAMILIES["pretext-rotation"]
    args = lambda runs: spec.args(tmp_path, runs) + ["engine.log_every_n_steps=1"]  # noqa: E731
    ref = run_cli(args(tmp_path / "ref"), tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = _train_rows(only_run(tmp_path / "ref"))
    assert len(reference) == spec.steps

    killed = run_cli(args(tmp_path / "killed"), tmp_path, kill_at=6)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = only_run(tmp_path / "killed")
    before = _train_rows(run)
    assert list(before["step"]) == list(reference["step"][:5])  # every step logged before the kill
    earlier = _checkpoint_seconds(run)
    assert earlier > 0
    # pretend the earlier part took 10,000 s (seconds are stored in the checkpoint's JSON): the
    # resumed run's total must include them
    newest = max((run / "checkpoints").glob("step-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    newest.write_text(newest.read_text().replace(json.dumps(earlier), "10000.0", 1))
    assert _checkpoint_seconds(run) == 10000.0

    resumed = run_cli(spec.resume_args(run), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _train_rows(run)
    assert list(after["step"]) == list(reference["step"])  # each step once, none lost
    pd.testing.assert_series_equal(after.iloc[:, 1], reference.iloc[:, 1])
    results = pd.read_csv(run / "results.csv")
    seconds = results.loc[results["metric"] == "pretrain_seconds", "value"]
    # the resumed part started from the step-4 checkpoint; the time before it is included
    assert len(seconds) == 1 and 10000.0 < float(seconds.iloc[0]) < 10000.0 + 600

"""Run directories never collide; the results table appends atomically from several processes."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from retinassl.errors import RunDirError
from retinassl.io.results import append_results, read_results, result_row
from retinassl.io.rundir import RunDir


def test_runs_never_overwrite(tmp_path: Path) -> None:
    runs = [RunDir.create(tmp_path, "exp") for _ in range(3)]
    assert len({r.path for r in runs}) == 3
    assert all(r.status()["status"] == "running" for r in runs)
    with pytest.raises(RunDirError, match="must be letters"):
        RunDir.create(tmp_path, "../escape")
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.resume(tmp_path)


def _append(args: tuple[str, int]) -> None:
    path, i = args
    append_results(path, [result_row(experiment="e", seed=i, metric="auc", value=i / 10),
                          result_row(experiment="e", seed=i, metric="ap", value=i / 20)])


def test_concurrent_appends_keep_every_row(tmp_path: Path) -> None:
    path = str(tmp_path / "results.csv")
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_append, [(path, i) for i in range(12)]))
    table = read_results(path)
    assert len(table) == 24
    assert sorted(table[table.metric == "auc"].seed.astype(int)) == list(range(12))
    with pytest.raises(ValueError, match="unknown result fields"):
        result_row(metric="auc", value=1, color="red")

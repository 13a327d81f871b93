"""Every family's training command under Lightning's DDP: 2 processes, gloo, CPU, through the command
line (Lightning's launcher re-runs the command for rank 1). Ranks end with identical weights, each
sample is drawn once per epoch across the ranks, and the run has one directory whose run.json and
results are written once (by rank 0). The engine-level DDP test (gradient averaging equals one
process with the joint batch) is tests/engine/test_engine.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from reliability.harness import FAMILIES, only_run, run_cli

DDP = {"patch-gan": ["learner.engine.devices=2", "learner.engine.strategy=ddp"]}


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_rank_ddp_through_the_cli(tmp_path: Path, family: str) -> None:
    spec = FAMILIES[family]
    spec.skip_unless_available()
    record = tmp_path / "record"
    extra = DDP.get(family, ["engine.devices=2", "engine.strategy=ddp"])
    proc = run_cli(spec.args(tmp_path, tmp_path / "runs") + extra, tmp_path, record=record)
    assert proc.returncode == 0, proc.stderr[-5000:]
    run = only_run(tmp_path / "runs")  # rank 1 used rank 0's directory
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert (run / "logs" / "log-rank1.txt").is_file()
    # ranks agree
    fits = sorted(p.name for p in record.glob("weights-rank0-fit*.safetensors"))
    assert fits and fits == sorted(p.name.replace("rank1", "rank0") for p in record.glob("weights-rank1-*"))
    for name in fits:
        a, b = load_file(str(record / name)), load_file(str(record / name.replace("rank0", "rank1")))
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all(), f"{name}: ranks disagree on {key}"
    # each sample once per epoch across the ranks
    epochs = [[json.loads(line) for line in (record / f"sampler-rank{r}.jsonl").read_text().splitlines()]
              for r in (0, 1)]
    assert len(epochs[0]) == len(epochs[1]) >= 1
    for e0, e1 in zip(*epochs):
        assert e0["epoch"] == e1["epoch"] and e0["world_size"] == e1["world_size"] == 2
        size = e0["size"]
        assert len(e0["indices"]) == len(e1["indices"]) == -(-size // 2)
        joint = e0["indices"] + e1["indices"]
        assert set(joint) == set(range(size))
        assert len(joint) - len(set(joint)) == len(joint) - size  # repeats only to pad an odd size
    # one set of results (rank 1 evaluated too, but did not append)
    for table in run.rglob("results.csv"):
        frame = pd.read_csv(table)
        assert not frame.duplicated().any(), table

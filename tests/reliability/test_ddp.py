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


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_launch_shares_one_run_directory(tmp_path: Path) -> None:
    """README's torchrun route on CPU: both ranks started by torchrun use one run directory named by
    the launch id, rank 1 logs to log-rank1.txt, results are written once."""
    import subprocess
    import sys

    from reliability.harness import cli_env

    torchrun = Path(sys.executable).with_name("torchrun")
    args = FAMILIES["supervised"].args(tmp_path, tmp_path / "runs") + ["engine.devices=2", "engine.strategy=ddp"]
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2",
                           str(Path(sys.executable).with_name("retinassl")), *args],
                          cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = only_run(tmp_path / "runs")
    assert "-torchrun-" in run.name
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert (run / "logs" / "log-rank1.txt").is_file()
    assert not pd.read_csv(run / "results.csv").duplicated().any()


def test_slurm_ranks_agree_on_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under srun (several tasks) rank 0 creates <name>-slurm<job>.<step>; another rank opens the same
    directory without touching run.json or the results table."""
    from retinassl.launch import RUN_DIR_ENV
    from retinassl.io.results import append_results, result_row
    from retinassl.io.rundir import RunDir

    monkeypatch.setenv(RUN_DIR_ENV, "")
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    run0 = RunDir.create(tmp_path, "job")
    assert run0.path.name == "job-slurm4242.3"
    before = (run0.path / "run.json").read_bytes()
    monkeypatch.setenv(RUN_DIR_ENV, "")
    monkeypatch.setenv("SLURM_PROCID", "1")
    run1 = RunDir.create(tmp_path, "job")
    assert run1.path == run0.path
    run1.update_status(status="finished")
    append_results(run1.results_file, [result_row(metric="auc", value=1.0)])
    assert (run0.path / "run.json").read_bytes() == before and not run1.results_file.exists()
    monkeypatch.setenv("SLURM_PROCID", "0")
    append_results(run0.results_file, [result_row(metric="auc", value=1.0)])
    assert run0.results_file.is_file()


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_run_killed_then_resumed_matches(tmp_path: Path) -> None:
    """A 2-rank run whose rank 0 is SIGKILLed at step 3, resumed with --resume (the run's config keeps
    devices=2), ends bit-identical to an uninterrupted 2-rank run."""
    import signal

    from reliability.harness import assert_same_run

    spec = FAMILIES["supervised"]
    ddp = ["engine.devices=2", "engine.strategy=ddp", "engine.max_epochs=3"]
    ref = run_cli(spec.args(tmp_path, tmp_path / "ref") + ddp, tmp_path)
    assert ref.returncode == 0, ref.stderr[-4000:]
    killed = run_cli(spec.args(tmp_path, tmp_path / "killed") + ddp, tmp_path, kill_at=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    run = only_run(tmp_path / "killed")
    resumed = run_cli(spec.resume_args(run), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "log-rank1.txt" in {p.name for p in (run / "logs").iterdir()}
    assert_same_run(only_run(tmp_path / "ref"), run)

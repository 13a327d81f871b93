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
    for name in ("config.yaml", "manifest.csv", "results.csv", "encoder/model.safetensors",
                 "encoder/model.json", "report/index.html"):
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


# -- --resume RUN key=value: the first override is not taken for CONFIG ----------------------------
def test_resume_applies_a_first_override_to_the_recorded_config(tmp_path: Path) -> None:
    import yaml

    from retinassl.cli.common import open_run
    from retinassl.jobs.patch_config import SemisupTrainConfig

    cfg, run = open_run(SemisupTrainConfig, "ssl-gan", ["n_labelled=10", f"data.options.root={tmp_path}"],
                        None, tmp_path)
    assert cfg.n_labelled == 10 and run.path.parent == tmp_path
    run.write_config(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    resumed, same = open_run(SemisupTrainConfig, "learner.engine.max_steps=7", ["seed=3"], run.path, None)
    assert same.path == run.path
    assert (resumed.n_labelled, resumed.learner.engine.max_steps, resumed.seed) == (10, 7, 3)
    from retinassl.errors import ConfigError
    with pytest.raises(ConfigError, match="CONFIG"):
        open_run(SemisupTrainConfig, "seed=1", [], None, tmp_path)


def test_sweep_resume_applies_a_first_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import retinassl.cli.sweep as sweep_cli
    import retinassl.report.html as html

    seen: list[dict] = []
    monkeypatch.setattr(sweep_cli, "runners", lambda: {"fake": lambda data, run, budget, resume: seen.append(data)})
    monkeypatch.setattr(html, "build_report", lambda run, **kw: run.path / "report")
    preset = tmp_path / "exp.yaml"
    preset.write_text(yaml.safe_dump({"name": "exp", "kind": "fake", "seeds": [0, 1, 2, 3, 4],
                                      "extension": {"enabled": True}}))
    result = runner.invoke(app, ["sweep", str(preset), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    result = runner.invoke(app, ["sweep", "--resume", str(run), "extension.enabled=false", "seeds=[0,1]"])
    assert result.exit_code == 0, result.output
    assert seen[0]["extension"]["enabled"] is True
    assert seen[1]["extension"]["enabled"] is False and seen[1]["seeds"] == [0, 1]
    # a finished sweep resumed without overrides says so and runs nothing
    result = runner.invoke(app, ["sweep", "--resume", str(run)])
    assert result.exit_code == 0 and "nothing to resume" in result.output and len(seen) == 2
    # the run directory records them: resuming an interrupted run without them keeps them
    status = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**status, "status": "failed"}))
    result = runner.invoke(app, ["sweep", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert seen[2]["extension"]["enabled"] is False and seen[2]["seeds"] == [0, 1]
    # a resume the sweep refuses for its settings leaves the recorded experiment as it was
    from retinassl.errors import ConfigError

    def refuses(data, run, budget, resume):
        raise ConfigError("was started with other settings (seeds changed)")

    monkeypatch.setattr(sweep_cli, "runners", lambda: {"fake": refuses})
    result = runner.invoke(app, ["sweep", "--resume", str(run), "seeds=[9]"])
    assert result.exit_code != 0
    assert yaml.safe_load((run / "sweep.yaml").read_text())["seeds"] == [0, 1]


def test_evaluate_resume_applies_its_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import retinassl.sweeps.transfer as transfer
    import retinassl.report.html as html

    seen: list = []

    def fake_run(config, run, shard=None) -> None:
        seen.append(config)
        (run.path / "comparison.md").write_text("table")

    monkeypatch.setattr(transfer, "run_transfer", fake_run)
    monkeypatch.setattr(html, "build_report", lambda run, **kw: run.path / "report")
    result = runner.invoke(app, ["evaluate", "probe", "scratch", "seed=3", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = next(tmp_path.iterdir())
    result = runner.invoke(app, ["evaluate", "probe", "scratch", "seed=5", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    # finished and no override: nothing to resume, nothing run
    result = runner.invoke(app, ["evaluate", "probe", "scratch", "--resume", str(run)])
    assert result.exit_code == 0 and "nothing to resume" in result.output, result.output
    # interrupted: resuming without overrides keeps the recorded ones
    status = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**status, "status": "failed"}))
    result = runner.invoke(app, ["evaluate", "probe", "scratch", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert [c.seed for c in seen] == [3, 5, 5]


def test_runs_archive_and_restore_commands(tmp_path: Path) -> None:
    from retinassl.io.rundir import RunDir

    run = RunDir.create(tmp_path / "runs", "study")
    run.update_status(status="finished")
    (run.path / "results.csv").write_text("metric,value\nimage_auc,0.8\n")
    (run.path / "checkpoints").mkdir()
    (run.path / "checkpoints" / "last.safetensors").write_bytes(b"weights")
    proc = _retinassl("runs", "archive", str(run.path), str(tmp_path / "kept"))  # no record of its data source
    assert proc.returncode == 2 and "--file-name-ids" in proc.stderr and not (tmp_path / "kept").exists()
    result = runner.invoke(app, ["runs", "archive", str(run.path), str(tmp_path / "kept"), "--file-name-ids"])
    assert result.exit_code == 0, result.output
    archive = tmp_path / "kept" / run.path.name
    assert f"archive: {archive}" in result.output
    assert not (archive / "checkpoints").exists()
    result = runner.invoke(app, ["runs", "restore", str(archive), "--runs-dir", str(tmp_path / "machine2")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "machine2" / run.path.name / "results.csv").read_text() == "metric,value\nimage_auc,0.8\n"
    assert "sweep --resume" in result.output
    # restoring over an existing run: one line naming it, exit 2, nothing changed
    proc = _retinassl("runs", "restore", str(archive), "--runs-dir", str(tmp_path / "machine2"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "exists" in proc.stderr and run.path.name in proc.stderr
    proc = _retinassl("runs", "archive", str(tmp_path / "kept"), str(tmp_path / "again"))
    assert proc.returncode == 2 and "no run.json" in proc.stderr and "Traceback" not in proc.stderr

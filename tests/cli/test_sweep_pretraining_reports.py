"""``retinassl sweep``: every pretraining a transfer sweep ran gets its own report (its loss curve and
figures) beside the sweep's."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from retinassl.cli import app


def test_a_transfer_sweep_reports_each_pretraining(tiny_root: Path, tmp_path: Path) -> None:
    step = {"method": {"name": "rotation"}, "engine": {"max_steps": 2, "batch_size": 4, "log_every_n_steps": 1,
                                                      "checkpoint_every_n_steps": -1, "precision": "32"}}
    config = {
        "kind": "transfer", "name": "tiny", "seed": 0,
        "data": {"source": "manifest", "manifest": str(tiny_root / "data" / "manifest.csv"),
                 "cache_dir": str(tmp_path / "cache")},
        "preprocess": {"size": 32}, "model": {"arch": "convnet", "kwargs": {"width": 8}},
        "inits": [{"name": "scratch"}, {"name": "rot", "pool": "train", "pretrain": step}],
        "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2}],
        "fractions": [1.0], "seeds": [0], "protocols": ["probe"], "probe": {"c_grid": [1.0]},
        "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "precision": "32"},
        "explain": {"tsne": False, "gradcam": 0}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["sweep", str(path), "--budget", "smoke", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    sub = run / "pretrain" / "rot" / "report"
    assert (sub / "index.html").is_file() and (sub / "figures" / "training-curves.png").is_file()
    assert f"pretraining report: {sub / 'index.html'}" in result.output
    assert (run / "report" / "index.html").is_file()

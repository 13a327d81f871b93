"""Run archives: what is kept (results, predictions, records), what is left out (weights, logs, image
paths) and why, replacing an archive of the same run, and a checked restore."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from retinassl.errors import RunDirError
from retinassl.io import archive as archive_module
from retinassl.io.archive import archive_run, restore_run
from retinassl.io.rundir import RunDir

KEPT = {"results.csv", "grid.settings.json", "run.json", "sweep.yaml", "comparison.md",
        "predictions/ssl-gan/ssl-gan-n10-s0.csv", "data/tuning-scratch.json", "data/downstream-removed.csv",
        "pretrain/lesions/results.csv"}
LEFT_OUT = {"checkpoints/last.safetensors": "training state (weights)",
            "pretrain/lesions/encoder/encoder.json": "weights",
            "models/referable/model.json": "weights",
            "cells/ssl-gan-n10-s0/claim": "a cell's own folder (weights, claims)",
            "logs/log.txt": "logs",
            "report/index.html": "the HTML report (rebuilt by the sweep)",
            "data/downstream.csv": "a data manifest (paths of the images)",
            "data/downstream.csv.root": "a data manifest (paths of the images)",
            "predictions/predict.csv": "names image files (an image or path column)",
            "figure.png": "not a table or record",
            "results.csv.lock": "not a table or record",
            "big.csv": "larger than 10 MB"}


def _run(tmp_path: Path) -> Path:
    run = RunDir.create(tmp_path / "runs", "study").path
    files = {name: f"{name}\n" for name in KEPT | set(LEFT_OUT)}
    files["results.csv"] = "metric,value\nimage_auc,0.8\n"
    files["predictions/ssl-gan/ssl-gan-n10-s0.csv"] = "id,label,score\nIDRiD_001,1,0.9\n"
    files["data/downstream.csv"] = "id,dr_grade\nIDRiD_001,2\n"   # a manifest: recognised by its .root
    files["data/downstream.csv.root"] = "/data/private/Jane Doe\n"
    files["predictions/predict.csv"] = "id,image,score\nx,/data/Jane Doe/scan.jpg,0.2\n"
    files["big.csv"] = "id,value\n" + "a,1\n" * (3 * 1024 * 1024)
    for name, text in files.items():
        if name == "run.json":
            continue
        path = run / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return run


def test_archive_keeps_results_and_records_and_leaves_out_weights_logs_and_paths(tmp_path: Path) -> None:
    run = _run(tmp_path)
    target = archive_run(run, tmp_path / "archives")
    assert target == tmp_path / "archives" / run.name
    summary = json.loads((target / "archive.json").read_text())
    assert set(summary["files"]) == KEPT
    assert summary["left_out"] == LEFT_OUT
    kept_on_disk = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert kept_on_disk == KEPT | {"archive.json"}
    for name, entry in summary["files"].items():
        original = (run / name).read_bytes()
        assert (target / name).read_bytes() == original
        assert entry == {"bytes": len(original), "sha256": hashlib.sha256(original).hexdigest()}
    # no path or private folder name anywhere in the archive
    text = "".join(p.read_text() for p in target.rglob("*") if p.is_file())
    assert "Jane Doe" not in text and str(tmp_path) not in text
    assert summary["run"]["name"] == "study" and summary["run"]["folder"] == run.name
    assert not list((tmp_path / "archives").glob(".tmp-*"))


def test_archiving_again_replaces_the_same_runs_archive_and_refuses_anything_else(tmp_path: Path) -> None:
    run = _run(tmp_path)
    dest = tmp_path / "archives"
    archive_run(run, dest)
    (run / "results.csv").write_text("metric,value\nimage_auc,0.8\nimage_auc,0.9\n")
    (run / "predictions" / "ssl-gan" / "ssl-gan-n10-s1.csv").write_text("id,label,score\nIDRiD_002,0,0.1\n")
    target = archive_run(run, dest)
    assert (target / "results.csv").read_text().count("image_auc") == 2
    assert "predictions/ssl-gan/ssl-gan-n10-s1.csv" in json.loads((target / "archive.json").read_text())["files"]
    assert sorted(p.name for p in dest.iterdir()) == [run.name]         # nothing left aside
    # another run that happens to have the folder's name: refused, the archive untouched
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "started": "2000-01-01T00:00:00"}))
    with pytest.raises(RunDirError, match="another run"):
        archive_run(run, dest)
    assert (target / "results.csv").read_text().count("image_auc") == 2
    # a folder that is not an archive is never replaced
    (tmp_path / "other" / run.name).mkdir(parents=True)
    with pytest.raises(RunDirError, match="not an archive"):
        archive_run(run, tmp_path / "other")
    with pytest.raises(RunDirError, match="no run.json"):
        archive_run(tmp_path / "other" / run.name, dest)


def test_a_failed_archive_leaves_the_earlier_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path)
    dest = tmp_path / "archives"
    target = archive_run(run, dest)
    before = (target / "archive.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(archive_module.shutil, "copyfile", broken)
    with pytest.raises(OSError, match="disk full"):
        archive_run(run, dest)
    assert (target / "archive.json").read_text() == before
    assert sorted(p.name for p in dest.iterdir()) == [run.name]


def test_restore_checks_every_file_and_never_replaces_a_run(tmp_path: Path) -> None:
    run = _run(tmp_path)
    target = archive_run(run, tmp_path / "archives")
    restored = restore_run(target, tmp_path / "elsewhere")
    assert restored == tmp_path / "elsewhere" / run.name
    for name in KEPT:
        assert (restored / name).read_bytes() == (run / name).read_bytes()
    assert RunDir.resume(restored).status()["status"] == "running"     # a run directory --resume opens
    with pytest.raises(RunDirError, match="exists"):
        restore_run(target, tmp_path / "elsewhere")
    # a changed or missing file is named
    (target / "results.csv").write_text("metric,value\nimage_auc,0.99\n")
    with pytest.raises(RunDirError, match="results.csv differs"):
        restore_run(target, tmp_path / "third")
    (target / "results.csv").unlink()
    with pytest.raises(RunDirError, match="results.csv is listed"):
        restore_run(target, tmp_path / "third")
    assert not (tmp_path / "third").exists() or not any((tmp_path / "third").iterdir())
    with pytest.raises(RunDirError, match="not a run archive"):
        restore_run(run, tmp_path / "third")

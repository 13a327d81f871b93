"""Run archives: what is kept (results, predictions, records without paths), what is left out
(weights, logs, anything naming the user's files), replacing an archive only by a continuation of
the same run, and a restore that checks every file and stays inside its folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from retinassl.errors import RunDirError
from retinassl.io import archive as archive_module
from retinassl.io.archive import LOCAL_PATH, archive_run, restore_run
from retinassl.io.rundir import RunDir

PRIVATE = "DOE_JANE_123"  # a patient-named folder of the user's


def _run(tmp_path: Path, source: str = "idrid") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_root = tmp_path / "data"
    run = RunDir.create(tmp_path / "runs", "study")
    run.update_status(status="failed", error=f"image file does not exist: {tmp_path}/{PRIVATE}/a.jpg")
    files = {
        "results.csv": "metric,value\nimage_auc,0.8\n",
        "predictions/ssl-gan/ssl-gan-n10-s0.csv": "id,label,score\nidrid-B-test-IDRiD_001,1,0.9\n",
        "predictions/ssl-gan@mx/ssl-gan-n10-s0.csv": "id,label,score\nmx-7,0,0.2\n",
        "predictions/segment/out.csv": f"id,image,score\nx,{tmp_path}/{PRIVATE}/scan.jpg,0.2\n",
        "split.csv": "id,split\nidrid-B-test-IDRiD_001,test\n",
        "data/tuning.csv": "init,candidate,seed,metric,value\nscratch,0,0,auc,0.7\n",
        "data/never-held-out.json": json.dumps({"never_held_out": {"lesions": 68, "scratch": 0}}),
        "data/downstream-removed.csv": "id,reason,related\na,copy,b\n",
        "data/downstream.csv": f"id,image,split,dr_grade\nidrid-B-test-IDRiD_001,{PRIVATE}/a.jpg,test,2\n",  # a manifest
        "data/downstream.csv.root": f"{tmp_path}/{PRIVATE}\n",
        "pretrain/lesions/results.csv": "metric,value\nseconds,12\n",
        "pretrain/lesions/config.yaml": f"data:\n  manifest: {tmp_path}/{PRIVATE}/pool.csv\n",
        "pretrain/lesions/encoder/model.json": "{}",
        "pretrain/lesions/encoder/model.safetensors": "weights",
        "checkpoints/last.json": "{}",
        "cells/ssl-gan-n10-s0/classifier/model.json": json.dumps({"config": {"root": f"{tmp_path}/{PRIVATE}"}}),
        "logs/log.txt": f"reading {tmp_path}/{PRIVATE}\n",
        f"report/figures/heatmap-{PRIVATE}.png": "png",
        "results.csv.lock": "",
    }
    files["sweep.yaml"] = yaml.safe_dump({
        "kind": "ssl-gan",
        "data": {"source": source, "options": {"root": str(data_root / "idrid")}},
        "preprocess": {"color_reference": f"{tmp_path}/{PRIVATE}/ref.png"},
        "evaluate_on": [{"name": "mx", "data": {"source": "mx_fundus_oct",
                                                "options": {"root": str(data_root / "mx")}}}]})
    files["grid.settings.json"] = json.dumps({"preprocess": {"size": 224}, "init": f"encoders/{PRIVATE}/encoder",
                                              "stem_regex": "^(?P<patient>\\d+)_"})
    files["data/tuning-scratch.json"] = json.dumps({"chosen": {"lr": 0.0003}, "init": "scratch"})
    for name, text in files.items():
        path = run.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return run.path


KEPT = {"results.csv", "run.json", "sweep.yaml", "grid.settings.json", "split.csv", "data/tuning.csv",
        "data/never-held-out.json",
        "data/downstream.ids.csv",
        "data/tuning-scratch.json", "data/downstream-removed.csv", "pretrain/lesions/results.csv",
        "predictions/ssl-gan/ssl-gan-n10-s0.csv", "predictions/ssl-gan@mx/ssl-gan-n10-s0.csv"}


def test_archive_keeps_results_and_records_without_paths_or_names(tmp_path: Path) -> None:
    run = _run(tmp_path)
    target = archive_run(run, tmp_path / "archives", data_root=tmp_path / "data")
    assert target == tmp_path / "archives" / run.name
    summary = json.loads((target / "archive.json").read_text())
    assert set(summary["files"]) == KEPT
    on_disk = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert on_disk == KEPT | {"archive.json"}
    for name, entry in summary["files"].items():
        data = (target / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if name.endswith(".csv") and not name.endswith(".ids.csv"):
            assert data == (run / name).read_bytes()                  # tables copied as they are
    # a manifest: its ids and splits only
    assert (target / "data" / "downstream.ids.csv").read_text() == "id,split\nidrid-B-test-IDRiD_001,test\n"
    # no local path and no private name anywhere: not in files, not in file names, not in archive.json
    everything = "".join(p.relative_to(tmp_path).as_posix() + p.read_text() for p in target.rglob("*") if p.is_file())
    assert PRIVATE not in everything and str(tmp_path) not in everything
    # data paths become the placeholder a resume resolves again; other paths are named as left out
    sweep = yaml.safe_load((target / "sweep.yaml").read_text())
    assert sweep["data"]["options"]["root"] == "$RETINASSL_DATA_ROOT/idrid"
    assert sweep["evaluate_on"][0]["data"]["options"]["root"] == "$RETINASSL_DATA_ROOT/mx"
    assert sweep["preprocess"]["color_reference"] == LOCAL_PATH
    assert summary["paths_replaced"] == {"grid.settings.json": ["init"], "sweep.yaml": ["preprocess.color_reference"]}
    settings = json.loads((target / "grid.settings.json").read_text())
    assert settings["init"] == LOCAL_PATH and settings["stem_regex"] == "^(?P<patient>\\d+)_"  # not a path: kept
    assert json.loads((target / "run.json").read_text()) == {
        "name": "study", "started": json.loads((run / "run.json").read_text())["started"], "status": "failed"}
    assert summary["left_out_per_folder"] == {".": 1, "cells": 1, "checkpoints": 1, "data": 2, "logs": 1,
                                              "predictions": 1, "pretrain": 3, "report": 1}
    assert not list((tmp_path / "archives").glob(".*"))


def test_ids_from_file_names_need_the_callers_word(tmp_path: Path) -> None:
    run = _run(tmp_path, source="folder")
    with pytest.raises(RunDirError, match=r"file names or tables: folder \(sweep.yaml: data\).*--file-name-ids"):
        archive_run(run, tmp_path / "archives", data_root=tmp_path / "data")
    assert not (tmp_path / "archives" / run.name).exists()
    target = archive_run(run, tmp_path / "archives", data_root=tmp_path / "data", file_name_ids=True)
    assert json.loads((target / "archive.json").read_text())["file_name_ids"] is True
    # a public dataset's loader fed the user's own label table (eyepacs), or a run that records no
    # source (an `evaluate external` of a folder): where its ids come from is not known
    for other in ("eyepacs", None):
        run = _run(tmp_path / str(other), source=other or "idrid")
        if other is None:
            (run / "sweep.yaml").unlink()
        with pytest.raises(RunDirError, match="eyepacs" if other else "records no data source"):
            # a destination of its own: a run made in the same second as the first has its name
            archive_run(run, tmp_path / f"archives-{other}")


def test_every_manifest_path_column_is_recognised() -> None:
    from retinassl.data.manifest import PATH_COLUMNS

    for column in PATH_COLUMNS + ("path", "source_path"):
        assert archive_module._PATH_COLUMN.match(column), column
    assert not archive_module._PATH_COLUMN.match("id") and not archive_module._PATH_COLUMN.match("score")


def test_an_archive_moved_aside_by_a_killed_replacement_is_put_back_and_checked(tmp_path: Path) -> None:
    run = _run(tmp_path)
    dest = tmp_path / "archives"
    target = archive_run(run, dest)
    target.rename(dest / f".{run.name}.old-999")                       # killed between the two renames
    (dest / f".tmp-{run.name}.abc").mkdir()                             # and an unfinished copy
    (run / "results.csv").write_text("metric,value\nimage_auc,0.1\n")  # an older copy of the run
    with pytest.raises(RunDirError, match="not the start of"):
        archive_run(run, dest)
    assert sorted(p.name for p in dest.iterdir()) == [run.name]
    assert (target / "results.csv").read_text() == "metric,value\nimage_auc,0.8\n"


def test_archiving_again_replaces_only_a_continuation_of_the_same_run(tmp_path: Path) -> None:
    run = _run(tmp_path)
    dest = tmp_path / "archives"
    archive_run(run, dest)
    with (run / "results.csv").open("a") as fh:
        fh.write("image_auc,0.9\n")
    (run / "predictions" / "ssl-gan" / "ssl-gan-n10-s1.csv").write_text(
        "id,label,score\nidrid-B-test-IDRiD_002,0,0.1\n")
    target = archive_run(run, dest)
    assert (target / "results.csv").read_text().count("image_auc") == 2
    assert "predictions/ssl-gan/ssl-gan-n10-s1.csv" in json.loads((target / "archive.json").read_text())["files"]
    assert sorted(p.name for p in dest.iterdir()) == [run.name]         # nothing left aside
    # an older copy of the run (its table not a continuation of the archived one): refused, archive kept
    (run / "results.csv").write_text("metric,value\nimage_auc,0.8\n")
    with pytest.raises(RunDirError, match="not the start of"):
        archive_run(run, dest)
    assert (target / "results.csv").read_text().count("image_auc") == 2
    # another run with the folder's name: refused
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "started": "2000-01-01T00:00:00"}))
    with pytest.raises(RunDirError, match="another run"):
        archive_run(run, dest)
    # a folder that is not an archive is never replaced; not a run; a destination inside the run
    (tmp_path / "other" / run.name).mkdir(parents=True)
    with pytest.raises(RunDirError, match="not an archive"):
        archive_run(run, tmp_path / "other")
    with pytest.raises(RunDirError, match="no run.json"):
        archive_run(tmp_path / "other" / run.name, dest)
    with pytest.raises(RunDirError, match="inside the run"):
        archive_run(run, run / "kept")


def test_a_running_run_is_not_archived(tmp_path: Path) -> None:
    run = _run(tmp_path)
    RunDir.resume(run)                                                  # running, by this live process
    with pytest.raises(RunDirError, match="is running"):
        archive_run(run, tmp_path / "archives")


def test_a_failed_archive_leaves_the_earlier_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path)
    dest = tmp_path / "archives"
    target = archive_run(run, dest)
    before = (target / "archive.json").read_text()
    real_rename = Path.rename

    def fails_into_place(self, other):  # the new archive cannot be renamed into place
        if Path(other) == target and self.name.startswith(".tmp-"):
            raise OSError("disk full")
        return real_rename(self, other)

    monkeypatch.setattr(Path, "rename", fails_into_place)
    with pytest.raises(OSError, match="disk full"):
        archive_run(run, dest)
    assert (target / "archive.json").read_text() == before
    assert sorted(p.name for p in dest.iterdir()) == [run.name]


def test_restore_checks_every_file_stays_inside_and_never_replaces_a_run(tmp_path: Path) -> None:
    run = _run(tmp_path)
    target = archive_run(run, tmp_path / "archives")
    restored = restore_run(target, tmp_path / "elsewhere")
    assert restored == tmp_path / "elsewhere" / run.name
    assert {p.relative_to(restored).as_posix() for p in restored.rglob("*") if p.is_file()} == (
        KEPT | {"restored-from-archive.json"})
    for name in KEPT:
        assert (restored / name).read_bytes() == (target / name).read_bytes()
    assert RunDir(restored).status()["status"] == "failed"              # as archived: --resume continues it
    with pytest.raises(RunDirError, match="exists"):
        restore_run(target, tmp_path / "elsewhere")
    # a changed or missing file is named
    (target / "results.csv").write_text("metric,value\nimage_auc,0.99\n")
    with pytest.raises(RunDirError, match="results.csv differs"):
        restore_run(target, tmp_path / "third")
    (target / "results.csv").unlink()
    with pytest.raises(RunDirError, match="results.csv is listed"):
        restore_run(target, tmp_path / "third")
    # names that would leave the archive or the runs folder are refused before anything is copied
    summary = json.loads((target / "archive.json").read_text())
    for bad in ({"files": {"../escaped.txt": {"bytes": 1, "sha256": "x"}}},
                {"files": {}, "run": {"folder": "../escaped"}}):
        (target / "archive.json").write_text(json.dumps({**summary, **bad}))
        with pytest.raises(RunDirError, match="escaped"):
            restore_run(target, tmp_path / "third")
    (target / "archive.json").write_text("{not json")
    with pytest.raises(RunDirError, match="cannot be read"):
        restore_run(target, tmp_path / "third")
    assert not (tmp_path / "third").exists() or not any((tmp_path / "third").iterdir())
    assert not (tmp_path / "escaped.txt").exists()
    with pytest.raises(RunDirError, match="not a run archive"):
        restore_run(run, tmp_path / "third")

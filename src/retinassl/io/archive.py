"""Archives of a run's results: what a study needs to be summarised again, or resumed, elsewhere.

A sweep that takes more than one session cannot keep its only state in a run directory of one
machine (``runs/`` is not committed, and a new machine starts without it). What its done cells left
is small: the results table, the per-image predictions, the records of what the run depends on
(``grid.settings.json``, the tuning records, ``sweep.yaml``...). :func:`archive_run` copies those,
and only those, into ``<dest>/<run name>/`` (e.g. ``benchmarks/results/runs/``, committed), with
``archive.json`` listing every file with its size and SHA-256 and every file left out with the
reason; archiving the same run again (at the end of the next session) replaces the earlier archive
in one rename. :func:`restore_run` checks the archive and copies it back to ``<runs dir>/<run
name>/``, from which ``--resume`` continues: the grid runner runs the cells without rows, and a
resume with other settings is refused as for any run.

Left out: weights and training state (``checkpoints/``, ``encoder/``, ``models/``, each cell's
``cells/`` folder), logs and the HTML report (rebuilt by the sweep), anything that is not a text table
or record (images, TensorBoard events, locks), files over :data:`MAX_FILE_BYTES`, and every file that
names the user's images: data manifests (``*.csv`` beside a ``*.csv.root``, and the ``.root`` files,
which hold a local path) and tables with an ``image`` or ``path`` column. File and folder names of
the user's data can identify patients (OCT exports are named after them), so an archive, meant to be
committed or shared, holds identifiers the toolkit made (image ids) and never a path.

A pretrained encoder is not archived (tens of MB): a transfer sweep restored without it refuses to
pretrain again an initialisation whose cells are done (the new encoder would not be the one those
cells used; :meth:`~retinassl.sweeps.transfer_inits.TransferInits.pretrained`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from retinassl.atomic import write_text
from retinassl.errors import RunDirError

ARCHIVE_FILE = "archive.json"
RESTORED_FILE = "restored-from-archive.json"
MAX_FILE_BYTES = 10 * 1024 * 1024
RECORD_SUFFIXES = frozenset({".csv", ".json", ".yaml", ".yml", ".md", ".txt"})
LEFT_OUT_FOLDERS = {
    "checkpoints": "training state (weights)",
    "encoder": "weights",
    "models": "weights",
    "cells": "a cell's own folder (weights, claims)",
    "logs": "logs",
    "report": "the HTML report (rebuilt by the sweep)",
}
PATH_COLUMNS = frozenset({"image", "path"})


def left_out_reason(run: Path, relative: Path) -> str | None:
    """Why the file ``relative`` (inside ``run``) is not archived, or None when it is."""
    for part in relative.parts[:-1]:
        if part in LEFT_OUT_FOLDERS:
            return LEFT_OUT_FOLDERS[part]
    name = relative.name
    if name == ARCHIVE_FILE:
        return "an archive record"
    if name.startswith(".tmp-"):
        return "an unfinished write"
    if relative.suffix == ".root" or (run / relative.parent / f"{name}.root").exists():
        return "a data manifest (paths of the images)"
    if relative.suffix not in RECORD_SUFFIXES:
        return "not a table or record"
    path = run / relative
    if path.stat().st_size > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB"
    if relative.suffix == ".csv":
        with path.open(encoding="utf-8", errors="replace") as fh:
            header = {c.strip().strip('"') for c in fh.readline().rstrip("\r\n").split(",")}
        if header & PATH_COLUMNS:
            return "names image files (an image or path column)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_record(run: Path) -> dict[str, Any]:
    try:
        record = json.loads((run / "run.json").read_text())
    except FileNotFoundError:
        raise RunDirError(f"{run} is not a run directory (no run.json)") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{run / 'run.json'}: not valid JSON ({exc})") from None
    return record


def _identity(record: dict[str, Any]) -> tuple[Any, Any]:
    """What tells one run from another of the same directory name: its name and start time."""
    return record.get("name"), record.get("started")


def _swap_into_place(staging: Path, target: Path) -> None:
    """``staging`` renamed to ``target``; an existing ``target`` is moved aside first and removed
    after, so a reader sees the old folder or the new one."""
    if not target.exists():
        staging.rename(target)
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(aside)
    staging.rename(target)
    shutil.rmtree(aside)


def archive_run(run: str | Path, dest: str | Path) -> Path:
    """Copy the results of ``run`` into ``<dest>/<run name>/`` (see the module docstring); returns
    that folder. An existing archive there must be of the same run (name and start time): it is
    replaced. Anything else there is refused."""
    run, dest = Path(run), Path(dest)
    record = _run_record(run)
    target = dest / run.name
    if target.exists():
        earlier = target / ARCHIVE_FILE
        if not earlier.is_file():
            raise RunDirError(f"{target} exists and is not an archive; choose another destination")
        if _identity(json.loads(earlier.read_text()).get("run", {})) != _identity(record):
            raise RunDirError(f"{target} is the archive of another run of the same name; choose another "
                              "destination")
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{run.name}-", dir=dest))
    try:
        files: dict[str, dict[str, Any]] = {}
        left_out: dict[str, str] = {}
        for path in sorted(p for p in run.rglob("*") if p.is_file()):
            relative = path.relative_to(run)
            reason = left_out_reason(run, relative)
            if reason is not None:
                left_out[relative.as_posix()] = reason
                continue
            copy = staging / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            files[relative.as_posix()] = {"bytes": copy.stat().st_size, "sha256": _sha256(copy)}
        summary = {"run": {"name": record.get("name"), "started": record.get("started"),
                           "status": record.get("status"), "folder": run.name},
                   "archived": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "files": files, "left_out": left_out}
        write_text(staging / ARCHIVE_FILE, json.dumps(summary, indent=1) + "\n")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def restore_run(archive: str | Path, runs_dir: str | Path) -> Path:
    """Check the archive against its ``archive.json`` (every file present with its size and
    SHA-256) and copy it to ``<runs_dir>/<run name>/`` for ``--resume``; returns that folder. An
    existing folder there is never replaced."""
    archive, runs_dir = Path(archive), Path(runs_dir)
    try:
        summary = json.loads((archive / ARCHIVE_FILE).read_text())
    except FileNotFoundError:
        raise RunDirError(f"{archive} is not a run archive (no {ARCHIVE_FILE}; make one with "
                          "`retinassl runs archive RUN DEST`)") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{archive / ARCHIVE_FILE}: not valid JSON ({exc})") from None
    for name, entry in sorted(summary.get("files", {}).items()):
        path = archive / name
        if not path.is_file():
            raise RunDirError(f"{archive}: {name} is listed in {ARCHIVE_FILE} but missing")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise RunDirError(f"{archive}: {name} differs from the archived file (size or SHA-256); the "
                              "archive was changed after it was written")
    folder = str(summary.get("run", {}).get("folder") or archive.name)
    target = runs_dir / folder
    if target.exists():
        raise RunDirError(f"{target} exists: resume it (`--resume {target}`) or restore into another "
                          "--runs-dir")
    runs_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder}-", dir=runs_dir))
    try:
        for name in sorted(summary.get("files", {})):
            copy = staging / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive / name, copy)
        write_text(staging / RESTORED_FILE, json.dumps({**summary, "restored_from": archive.name}, indent=1) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

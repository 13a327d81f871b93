"""Archives of a run's results: what a study needs to be summarised again, or resumed, elsewhere.

A sweep that takes more than one session cannot keep its only state in a run directory of one
machine (``runs/`` is not committed, and a new machine starts without it). What its done cells left
is small: the results table, the per-image predictions, the records of what the run depends on.
:func:`archive_run` copies those, and only those (an allow-list, :data:`KEPT`), into ``<dest>/<run
name>/`` (e.g. ``benchmarks/results/runs/``, committed), with ``archive.json`` listing every kept file
with its size and SHA-256 and counting what was left out per folder. Archiving the same run again (at
the next stop) replaces the earlier archive only when it continues it (the earlier results table is
the start of the new one). :func:`restore_run` checks the archive and copies it back to ``<runs
dir>/<run name>/``, from which ``--resume`` continues: the grid runner runs the cells without rows,
and a resume with other settings is refused as for any run.

**Nothing that names the user's files.** An archive is meant to be committed or shared, and file or
folder names of the user's images can identify patients (OCT exports are named after them):

- the configuration records (``sweep.yaml``, ``transfer.yaml``, ``config.yaml``, the settings and
  tuning records) are copied with every absolute path replaced: a path under the data root
  (``--data-root`` / ``RETINASSL_DATA_ROOT``) by its ``$RETINASSL_DATA_ROOT/...`` placeholder, which a
  resume on another machine resolves again, any other by :data:`LOCAL_PATH` (a resume then needs that
  key given again; the settings records accept either stand-in for the path the resume gives,
  :func:`retinassl.sweeps.grid.check_unchanged`); ``run.json`` keeps its name, start time and status only (its error text may quote
  an image path);
- tables with a column that holds paths (``image``, ``path``, masks, OCT volumes) are left out;
- image ids are kept (predictions are paired by them): the named datasets' ids are the toolkit's
  (``idrid-B-test-IDRiD_001``), but a ``folder``, ``csv``, ``glob`` or ``manifest`` source takes its ids
  from the user's file names, so a run reading one is archived only when the caller says its file
  names identify no one (``file_name_ids=True``, ``--file-name-ids``).

Weights are not archived (tens of MB): a transfer sweep restored without its pretrained encoder
refuses to pretrain again an initialisation it has results of
(:meth:`~retinassl.sweeps.transfer_inits.TransferInits.check_encoders_kept`).
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from retinassl.atomic import write_text
from retinassl.data_roots import PLACEHOLDER, data_root_from_env
from retinassl.errors import RunDirError

ARCHIVE_FILE = "archive.json"
RESTORED_FILE = "restored-from-archive.json"
LOCAL_PATH = "<local path, not archived>"
#: What an archive holds (paths relative to the run; ``*`` does not cross a ``/``, ``**/`` does).
KEPT = ("results.csv", "grid.settings.json", "split.csv", "predictions/**/*.csv", "data/tuning*.json",
        "data/tuning.csv", "data/*-removed.csv", "pretrain/*/results.csv")
#: Records copied with their paths replaced (see the module docstring).
RECORDS = ("run.json", "sweep.yaml", "transfer.yaml", "config.yaml")
#: Sources whose image ids are the user's file names.
FILE_NAME_SOURCES = frozenset({"folder", "csv", "glob", "manifest"})
_PATH_COLUMN = re.compile(r"^(image|path|.*_path|mask_.*|oct_volume|thickness_map)$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _matches(relative: str, pattern: str) -> bool:
    if "**/" in pattern:
        head, tail = pattern.split("**/", 1)
        return relative.startswith(head) and fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], tail)
    return fnmatch.fnmatchcase(relative, pattern) and relative.count("/") == pattern.count("/")


def _path_columns(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        header = [c.strip().strip('"') for c in fh.readline().rstrip("\r\n").split(",")]
    return [c for c in header if _PATH_COLUMN.match(c)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _without_paths(value: Any, data_root: Path | None, replaced: list[str], key: str = "") -> Any:
    """``value`` with every absolute path replaced (see the module docstring); the keys of paths
    that are not under the data root are added to ``replaced``."""
    if isinstance(value, dict):
        return {k: _without_paths(v, data_root, replaced, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v, data_root, replaced, f"{key}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str) or not (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value)):
        return value
    if data_root is not None:
        try:
            rest = Path(value).expanduser().resolve().relative_to(data_root.expanduser().resolve())
        except ValueError:
            pass
        else:
            return PLACEHOLDER if str(rest) == "." else f"{PLACEHOLDER}/{rest.as_posix()}"
    replaced.append(key)
    return LOCAL_PATH


def _sources(value: Any, key: str = "") -> list[tuple[str, str]]:
    """``(key, source)`` of every data source a configuration record names."""
    out = []
    if isinstance(value, dict):
        if isinstance(value.get("source"), str):
            out.append((key or "data", value["source"]))
        for k, v in value.items():
            out.extend(_sources(v, f"{key}.{k}" if key else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_sources(v, f"{key}.{i}"))
    return out


def _read_record(path: Path) -> Any:
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: cannot be read ({exc})") from None


def _write_record(path: Path, value: Any) -> None:
    text = (json.dumps(value, indent=1) + "\n" if path.suffix == ".json"
            else yaml.safe_dump(value, sort_keys=False))
    write_text(path, text)


def _run_record(run: Path) -> dict[str, Any]:
    if not (run / "run.json").is_file():
        raise RunDirError(f"{run} is not a run directory (no run.json)")
    record = _read_record(run / "run.json")
    if not isinstance(record, dict):
        raise RunDirError(f"{run / 'run.json'}: not a run record")
    return record


def _still_running(record: dict[str, Any]) -> bool:
    if record.get("status") != "running" or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _archived_summary(target: Path) -> dict[str, Any]:
    summary = _read_record(target / ARCHIVE_FILE)
    if not isinstance(summary, dict) or not isinstance(summary.get("files"), dict):
        raise RunDirError(f"{target / ARCHIVE_FILE}: not an archive record")
    return summary


def _clear_leftovers(dest: Path, name: str) -> None:
    """Folders an interrupted archive of ``name`` left in ``dest`` (never the archive itself)."""
    for stale in list(dest.glob(f".tmp-{name}-*")) + list(dest.glob(f".{name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(staging: Path, target: Path) -> None:
    """``staging`` renamed to ``target``. An earlier ``target`` is moved aside first and put back
    if the second rename fails, so the earlier archive is never lost."""
    if not target.exists():
        staging.rename(target)
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(aside)
    try:
        staging.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside)


def archive_run(run: str | Path, dest: str | Path, *, data_root: str | Path | None = None,
                file_name_ids: bool = False) -> Path:
    """Copy the results of ``run`` into ``<dest>/<run name>/`` (see the module docstring); returns
    that folder.

    Args:
        run: a run directory.
        dest: the folder that holds archives.
        data_root: the data root whose paths become placeholders (None: ``RETINASSL_DATA_ROOT``).
        file_name_ids: the run reads a source whose image ids are file names, and they identify no
            one (e.g. a public dataset in a folder): archive it anyway.

    Raises:
        RunDirError: not a run directory; the run is still running; ``dest`` is inside the run; a
            folder there that is not an earlier archive of this run, or one whose results this run
            does not continue; a source with file-name ids without ``file_name_ids``.
    """
    run, dest = Path(run).resolve(), Path(dest).resolve()
    record = _run_record(run)
    if not _RUN_NAME.match(run.name):
        raise RunDirError(f"{run}: not a run directory name")
    if dest == run or run in dest.parents:
        raise RunDirError(f"{dest} is inside the run {run}; archive it elsewhere")
    if _still_running(record):
        raise RunDirError(f"{run} is running (pid {record['pid']}); archive it when it has stopped, so that every "
                          "row has its predictions")
    root = Path(data_root) if data_root is not None else data_root_from_env()
    target = dest / run.name
    identity = {"name": record.get("name"), "started": record.get("started")}
    if target.exists():
        if not (target / ARCHIVE_FILE).is_file():
            raise RunDirError(f"{target} exists and is not an archive; choose another destination")
        earlier = _archived_summary(target)
        if {k: earlier.get("run", {}).get(k) for k in identity} != identity:
            raise RunDirError(f"{target} is the archive of another run of the same name; choose another destination")
        old_results = target / "results.csv"
        if old_results.is_file() and not (run / "results.csv").read_bytes().startswith(old_results.read_bytes()):
            raise RunDirError(f"{target}: its results table is not the start of {run / 'results.csv'} (an older copy "
                              "of the run, or another machine continued it); the archive was left as it is")
    dest.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(dest, run.name)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{run.name}-", dir=dest))
    try:
        files: dict[str, dict[str, Any]] = {}
        left_out: Counter[str] = Counter()
        replaced: dict[str, list[str]] = {}
        sources: list[tuple[str, str, str]] = []
        # the results table first: a row's predictions are written before the row, so every archived
        # row has its predictions even if a cell ended during the copy
        candidates = sorted((p for p in run.rglob("*") if p.is_file() or p.is_symlink()),
                            key=lambda p: (p.relative_to(run).as_posix() != "results.csv", p.as_posix()))
        for path in candidates:
            relative = path.relative_to(run).as_posix()
            folder = relative.split("/", 1)[0] if "/" in relative else "."
            kept = any(_matches(relative, pattern) for pattern in KEPT)
            if path.is_symlink() or not (kept or relative in RECORDS):
                left_out[folder] += 1
                continue
            copy = staging / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            if relative.endswith(".csv"):
                if _path_columns(path):
                    left_out[folder] += 1
                    continue
                shutil.copyfile(path, copy)
            else:  # a record (JSON or YAML): its paths replaced
                value = _read_record(path)
                if relative == "run.json":
                    value = {**identity, "status": record.get("status")}
                sources.extend((relative, key, source) for key, source in _sources(value))
                keys: list[str] = []
                _write_record(copy, _without_paths(value, root, keys))
                if keys:
                    replaced[relative] = keys
            files[relative] = {"bytes": copy.stat().st_size, "sha256": _sha256(copy)}
        named = sorted({f"{source} ({relative}: {key})" for relative, key, source in sources
                        if source in FILE_NAME_SOURCES})
        if named and not file_name_ids:
            raise RunDirError(f"{run} reads data whose image ids are file names: {', '.join(named)}; the archive "
                              "would hold them. Archive it only if those names identify no one (e.g. a public "
                              "dataset): --file-name-ids")
        if "results.csv" not in files:
            raise RunDirError(f"{run} has no results table (results.csv): nothing to archive")
        summary = {"run": {**identity, "status": record.get("status"), "folder": run.name},
                   "archived": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "files": files, "left_out_per_folder": dict(sorted(left_out.items())),
                   "paths_replaced": replaced, "file_name_ids": bool(named)}
        write_text(staging / ARCHIVE_FILE, json.dumps(summary, indent=1) + "\n")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _safe_name(name: Any, archive: Path) -> str:
    """A file name of ``archive.json``, refused unless it stays inside the archive."""
    if (not isinstance(name, str) or not name or name.startswith(("/", "\\")) or "\\" in name
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise RunDirError(f"{archive / ARCHIVE_FILE}: {name!r} is not a file name inside the archive")
    return name


def restore_run(archive: str | Path, runs_dir: str | Path) -> Path:
    """Check the archive against its ``archive.json`` (every file present with its size and
    SHA-256) and copy it to ``<runs_dir>/<run name>/`` for ``--resume``; returns that folder. An
    existing folder there is never replaced."""
    archive, runs_dir = Path(archive), Path(runs_dir)
    if not (archive / ARCHIVE_FILE).is_file():
        raise RunDirError(f"{archive} is not a run archive (no {ARCHIVE_FILE}; make one with "
                          "`retinassl runs archive RUN DEST`)")
    summary = _archived_summary(archive)
    names = [_safe_name(name, archive) for name in sorted(summary["files"])]
    for name in names:
        entry = summary["files"][name]
        path = archive / name
        if not path.is_file() or path.is_symlink():
            raise RunDirError(f"{archive}: {name} is listed in {ARCHIVE_FILE} but missing")
        if (not isinstance(entry, dict) or path.stat().st_size != entry.get("bytes")
                or _sha256(path) != entry.get("sha256")):
            raise RunDirError(f"{archive}: {name} differs from the archived file (size or SHA-256); the "
                              "archive was changed after it was written")
    folder = summary.get("run", {}).get("folder") or archive.name
    if not isinstance(folder, str) or not _RUN_NAME.match(folder):
        raise RunDirError(f"{archive / ARCHIVE_FILE}: {folder!r} is not a run directory name")
    target = runs_dir / folder
    if target.exists():
        raise RunDirError(f"{target} exists: resume it (`--resume {target}`) or restore into another --runs-dir")
    runs_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder}-", dir=runs_dir))
    try:
        for name in names:
            copy = staging / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive / name, copy)
        write_text(staging / RESTORED_FILE, json.dumps({**summary, "restored_from": archive.name}, indent=1) + "\n")
        try:
            target.mkdir()  # claimed exclusively: a folder that appeared meanwhile is never replaced
        except FileExistsError:
            raise RunDirError(f"{target} appeared while restoring: restore into another --runs-dir") from None
        try:
            for entry in staging.iterdir():
                entry.rename(target / entry.name)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

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

- the configuration records (``sweep.yaml``, ``transfer.yaml``, ``config.yaml``, ``evaluate.yaml``,
  the settings and tuning records) are copied with every path replaced (absolute ones, and relative
  ones at keys that hold paths, :data:`PATH_KEYS`): a path under the data root
  (``--data-root`` / ``RETINASSL_DATA_ROOT``) by its ``$RETINASSL_DATA_ROOT/...`` placeholder, which a
  resume on another machine resolves again, any other by :data:`LOCAL_PATH` (a resume then needs that
  key given again; the settings records accept either stand-in for the path the resume gives,
  :func:`retinassl.sweeps.grid.check_unchanged`); ``run.json`` keeps its name, times and status only
  (its error text may quote an image path);
- tables with a column that holds paths (``image``, ``path``, masks, OCT volumes) are left out; a
  data manifest (``X.csv`` beside the ``X.csv.root`` naming its folder) is archived as ``X.ids.csv``,
  its ids and splits only (what a summary counts);
- image ids are kept (predictions are paired by them): the ids of the public datasets read by their
  own loaders and of synthetic images are the toolkit's (``idrid-B-test-IDRiD_001``,
  :data:`TOOLKIT_ID_SOURCES`); every other source takes its ids from the user's file names or tables,
  so a run that reads one, or records no source at all, is archived only when the caller says its
  ids identify no one (``file_name_ids=True``, ``--file-name-ids``).

Weights are not archived (tens of MB): a transfer sweep restored without its pretrained encoder
refuses to pretrain again an initialisation it has results of
(:meth:`~retinassl.sweeps.transfer_inits.TransferInits.check_encoders_kept`).
"""

from __future__ import annotations

import contextlib
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

import pandas as pd
import yaml

from retinassl.atomic import write_text
from retinassl.config import safe_load_bounded
from retinassl.data_roots import PLACEHOLDER, data_root_from_env
from retinassl.errors import ConfigError, RunDirError

ARCHIVE_FILE = "archive.json"
RESTORED_FILE = "restored-from-archive.json"
LOCAL_PATH = "<local path, not archived>"
#: What an archive holds (paths relative to the run; ``*`` does not cross a ``/``, ``**/`` does).
KEPT = ("results.csv", "grid.settings.json", "split.csv", "test-patch-labels.csv", "gallery.json",
        "comparison.csv", "comparison.md", "external.csv", "external.md", "predictions/**/*.csv",
        "data/tuning*.json", "data/tuning.csv", "data/*-removed.csv", "data/encoders.json",
        "data/pretrain-selection-*.json", "data/never-held-out.json", "pretrain/*/results.csv",
        "pretrain/*/seed-*/results.csv")
#: Records copied with their paths replaced (see the module docstring).
RECORDS = ("run.json", "sweep.yaml", "transfer.yaml", "config.yaml", "evaluate.yaml")
#: What ``run.json`` keeps: who the run is and how long it ran (its error text may quote a path).
RUN_FIELDS = ("name", "started", "status", "elapsed_seconds", "resumed", "finished")
#: Sources whose image ids are the toolkit's own (public datasets read by their own loader, synthetic
#: images); every other source takes ids from the user's file names or tables.
TOOLKIT_ID_SOURCES = frozenset({"synthetic", "idrid", "drive", "stare", "mx_fundus_oct"})
#: Record keys whose string values are paths even when relative.
PATH_KEYS = frozenset({"root", "manifest", "csv", "labels_csv", "matches_csv", "images", "out_dir", "init",
                       "cache_dir", "weights", "path", "reference", "runs_dir", "encoder", "model"})
#: A data manifest (``X.csv`` beside ``X.csv.root``) is archived as ``X.ids.csv``: these columns only.
IDS_SUFFIX = ".ids.csv"
MANIFEST_ID_COLUMNS = ("id", "split")
_PATH_COLUMN = re.compile(r"^(image|path|.*_path|mask_.*|oct_volume|oct_bscan|thickness_map|ir_image)$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _matches(relative: str, pattern: str) -> bool:
    if "**/" in pattern:
        head, tail = pattern.split("**/", 1)
        return relative.startswith(head) and fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], tail)
    return fnmatch.fnmatchcase(relative, pattern) and relative.count("/") == pattern.count("/")


def _path_columns(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", errors="replace") as fh:
        header = [c.strip().strip('"') for c in fh.readline().rstrip("\r\n").split(",")]
    return [c for c in header if _PATH_COLUMN.match(c)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_path(value: str, name: str) -> bool:
    """Whether a record's string is a path: absolute (or ``~``), or relative with a folder at a key
    that holds paths (``root``, ``manifest``, ``init``...)."""
    if value.startswith(PLACEHOLDER):
        return False
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    return name in PATH_KEYS and ("/" in value or "\\" in value)


def _under_root(value: str, data_root: Path | None) -> str | None:
    """The placeholder form of ``value`` when it lies under the data root (as written or resolved)."""
    if data_root is None:
        return None
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user
        return None
    for candidate, root in ((path.absolute(), data_root.expanduser().absolute()),
                            (path.resolve(), data_root.expanduser().resolve())):
        try:
            rest = candidate.relative_to(root)
        except ValueError:
            continue
        return PLACEHOLDER if str(rest) == "." else f"{PLACEHOLDER}/{rest.as_posix()}"
    return None


def _without_paths(value: Any, data_root: Path | None, replaced: list[str], key: str = "") -> Any:
    """``value`` with every path replaced (see the module docstring); the keys of paths that are not
    under the data root are added to ``replaced``."""
    if isinstance(value, dict):
        return {k: _without_paths(v, data_root, replaced, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v, data_root, replaced, f"{key}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str) or not _is_path(value, key.rsplit(".", 1)[-1]):
        return value
    placeholder = _under_root(value, data_root)
    if placeholder is not None:
        return placeholder
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
        return json.loads(text) if path.suffix == ".json" else safe_load_bounded(text, str(path))
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
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
    if (not isinstance(summary, dict) or not isinstance(summary.get("files"), dict)
            or not isinstance(summary.get("run", {}), dict)):
        raise RunDirError(f"{target / ARCHIVE_FILE}: not an archive record")
    return summary


def _recover_leftovers(dest: Path, name: str) -> None:
    """What an interrupted archive of ``name`` left in ``dest``: an earlier archive moved aside and
    not replaced is put back (then checked as any earlier archive); unfinished copies are removed."""
    target = dest / name
    for aside in sorted(dest.glob(f".{name}.old-*")):
        if not target.exists() and (aside / ARCHIVE_FILE).is_file():
            aside.rename(target)
        else:
            shutil.rmtree(aside, ignore_errors=True)
    for stale in dest.glob(f".tmp-{name}.*"):
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
    if dest.is_dir():
        _recover_leftovers(dest, run.name)
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
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{run.name}.", dir=dest))
    try:
        files: dict[str, dict[str, Any]] = {}
        left_out: Counter[str] = Counter()
        replaced: dict[str, list[str]] = {}
        sources: list[tuple[str, str, str]] = []
        # the results table is copied before the other files are listed: a cell writes its predictions
        # before its rows, so every archived row has its predictions even if a cell ends meanwhile
        if (run / "results.csv").is_file() and not (run / "results.csv").is_symlink():
            shutil.copyfile(run / "results.csv", staging / "results.csv")
        candidates = sorted(p for p in run.rglob("*") if p.is_file() or p.is_symlink())
        for path in candidates:
            relative = path.relative_to(run).as_posix()
            folder = relative.split("/", 1)[0] if "/" in relative else "."
            kept = any(_matches(relative, pattern) for pattern in KEPT)
            if (not path.is_symlink() and relative.endswith(".csv") and not relative.endswith(IDS_SUFFIX)
                    and (run / f"{relative}.root").is_file()):
                ids = relative[:-len(".csv")] + IDS_SUFFIX  # a manifest: its ids and splits only
                frame = pd.read_csv(path, usecols=lambda c: c in MANIFEST_ID_COLUMNS, dtype=str, keep_default_na=False)
                write_text(staging / ids, frame.to_csv(index=False))
                files[ids] = {"bytes": (staging / ids).stat().st_size, "sha256": _sha256(staging / ids)}
            if path.is_symlink() or not (kept or relative in RECORDS):
                left_out[folder] += 1
                continue
            copy = staging / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            if relative == "results.csv":
                pass  # copied first
            elif relative.endswith(".csv") or relative.endswith(".md"):
                if relative.endswith(".csv") and _path_columns(path):
                    left_out[folder] += 1
                    continue
                shutil.copyfile(path, copy)
            else:  # a record (JSON or YAML): its paths replaced
                value = _read_record(path)
                if relative == "run.json":
                    value = {k: record[k] for k in RUN_FIELDS if k in record}
                sources.extend((relative, key, source) for key, source in _sources(value))
                keys: list[str] = []
                _write_record(copy, _without_paths(value, root, keys))
                if keys:
                    replaced[relative] = keys
            files[relative] = {"bytes": copy.stat().st_size, "sha256": _sha256(copy)}
        named = sorted({f"{source} ({relative}: {key})" for relative, key, source in sources
                        if source not in TOOLKIT_ID_SOURCES})
        if (named or not sources) and not file_name_ids:
            where = (f"reads data whose image ids come from your file names or tables: {', '.join(named)}" if named
                     else "records no data source (sweep.yaml, config.yaml...), so where its image ids come from "
                          "is not known")
            raise RunDirError(f"{run} {where}; the archive would hold them. Archive it only if those ids identify "
                              "no one (e.g. a public dataset): --file-name-ids")
        if "results.csv" not in files:
            raise RunDirError(f"{run} has no results table (results.csv): nothing to archive")
        summary = {"run": {**identity, "status": record.get("status"), "folder": run.name},
                   "archived": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "files": files, "left_out_per_folder": dict(sorted(left_out.items())),
                   "paths_replaced": replaced, "file_name_ids": bool(named or not sources)}
        write_text(staging / ARCHIVE_FILE, json.dumps(summary, indent=1) + "\n")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                dest.rmdir()  # a destination made for this archive, if it stayed empty
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
            staging.rename(target)  # onto the empty claim in one step (refused if anything was written into it)
        except OSError:
            with contextlib.suppress(OSError):
                target.rmdir()  # the claim, if it is still empty
            raise RunDirError(f"{target} changed while restoring: restore into another --runs-dir") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

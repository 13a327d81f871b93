"""The one grid runner: every sweep (transfer, SSL-GAN table, vessel curve, and the ones to come) is a
config plus a :class:`Grid` (its cells and a cell function); planning, done-cell detection, resume,
worker processes, SIGTERM and the results table are written here once.

A cell is a mapping whose ``key`` columns are columns of the results table (``task``, ``init``,
``protocol``, ``fraction``, ``seed``, ``fold``, ``method``, ``n_labelled``...). A cell is *done* when
the run's results table holds a row with its key (among the rows :meth:`Grid.done_rows` selects): a
cell appends all its rows at once, at its end, so a cell killed half-way is simply run again, and a
resumed sweep (``--resume``) runs only what is missing. What a done cell's rows depend on beyond its
key (:meth:`Grid.settings`, where a grid defines it: the transfer and SSL-GAN sweeps' preprocessing,
splits, training settings) is recorded by the first run (``grid.settings.json``); a resume with other
values is refused, since it would skip the done cells and put rows of two experiments into one table.
Several worker processes share the cells by claiming each one atomically (``cells/<name>/claim``);
claims of an interrupted sweep are cleared when it starts again. SIGTERM ends the sweep as an exception (:class:`~retinassl.errors.Terminated`), and
:func:`~retinassl.sweeps.workers.run_worker_processes` stops the workers with it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from retinassl.atomic import write_text
from retinassl.errors import ConfigError
from retinassl.data_roots import PLACEHOLDER, data_root_from_env
from retinassl.io.archive import LOCAL_PATH, RESTORED_FILE
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir

log = logging.getLogger(__name__)

Cell = Mapping[str, Any]


def merge_budget(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` (a budget, or any partial config) merged into ``base`` key by key: mappings merge,
    anything else replaces. Where ``update`` changes a data ``source``, the old source's ``options``
    are dropped (options of one source mean nothing to another) and only the new ones apply."""
    out = dict(base)
    source_changes = "source" in update and update["source"] != base.get("source")
    if source_changes:
        out.pop("options", None)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_budget(out[key], value)
        else:
            out[key] = value
    return out


def key_value(column: str, value: Any) -> Any:
    """One key column's value in a comparable form (as written to, and read back from, the results
    table: fractions rounded to 6 decimals, integers as int, an empty fold as -1)."""
    if column in ("fraction",):
        return round(float(value), 6)
    if column in ("seed", "n_labelled"):
        return int(value)
    if column == "fold":
        return -1 if value is None or value == "" or (isinstance(value, float) and math.isnan(value)) else int(value)
    return str(value)


class Grid:
    """A sweep as the runner sees it. Subclasses set ``key`` and implement :meth:`cells` and
    :meth:`run_cell`; optionally :meth:`prepare` (once, in the main process, before any cell:
    shared data, pretraining), :meth:`finish` (once, after every cell: figures, comparisons),
    :meth:`done_rows` and :meth:`cell_name`."""

    key: tuple[str, ...] = ()

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def prepare(self) -> None:
        """Shared work before the cells (main process only)."""

    def cells(self) -> list[Cell]:
        """Every cell of the plan, in the order they run."""
        raise NotImplementedError

    def run_cell(self, cell: Cell) -> None:
        """Run one cell and append all its rows to the results table at its end."""
        raise NotImplementedError

    def finish(self) -> None:
        """Work after every cell (main process only)."""

    def after_cell(self, cell: Cell) -> None:
        """Called after each finished cell, in the process that ran it (e.g. incremental tests)."""

    def settings(self) -> dict[str, Any] | None:
        """What every done cell's rows depend on beyond the cell's key (JSON-able; None: nothing):
        recorded by the first run, a resume with other values refused (:func:`check_unchanged`).
        Settings that only add cells (more seeds, fractions, inits) belong in the key, not here."""
        return None

    def setting_defaults(self) -> dict[str, Any]:
        """The default value of settings fields added after a record may have been written (same
        nesting as :meth:`settings`): a field the record lacks is accepted only at its default, since
        the recorded run ran without it (:func:`check_unchanged`)."""
        return {}

    def settings_not_used_yet(self) -> set[str]:
        """Keys of :meth:`settings` that no done cell depends on yet (recorded anew on a resume;
        default: all of them while no cell is done, so a first run that failed before any cell can
        be restarted with other settings)."""
        return set(self.settings() or {}) if not self.done() else set()

    def done_rows(self, results: pd.DataFrame) -> pd.DataFrame:
        """The rows of the results table that mark their cell as done (default: all)."""
        return results

    def cell_name(self, cell: Cell) -> str:
        """A directory-safe name of a cell (for its claim and its files)."""
        text = "-".join(f"{k}{cell[k]}" for k in self.key)
        return re.sub(r"[^A-Za-z0-9._+-]", "_", text)

    # -- bookkeeping ---------------------------------------------------------------------------
    def cell_key(self, cell: Cell) -> tuple:
        return tuple(key_value(c, cell[c]) for c in self.key)

    def done(self) -> set[tuple]:
        """Keys of the cells whose rows are in the results table."""
        if not self.run.results_file.is_file():
            return set()
        rows = self.done_rows(read_results(self.run.results_file))
        rows = rows[[c for c in self.key]].dropna(subset=[c for c in self.key if c not in ("fold",)])
        return {tuple(key_value(c, v) for c, v in zip(self.key, values))
                for values in rows.itertuples(index=False, name=None)}

    def missing(self) -> list[Cell]:
        done = self.done()
        return [c for c in self.cells() if self.cell_key(c) not in done]


def claim(path: Path) -> bool:
    """Atomically claim a cell for this process (False when another process has it)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path / "claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def work(grid: Grid, claims: bool) -> int:
    """Run every cell of ``grid`` that is neither done nor (with ``claims``) claimed by another
    process; returns how many this process ran."""
    ran = 0
    # read once: a cell another worker finishes meanwhile keeps its claim file, so it is not rerun
    done = grid.done()
    for cell in grid.cells():
        if grid.cell_key(cell) in done:
            continue
        if claims and not claim(grid.run.path / "cells" / grid.cell_name(cell)):
            continue
        start = time.perf_counter()
        grid.run_cell(cell)
        grid.after_cell(cell)
        ran += 1
        log.info("cell %s done in %.0f s", grid.cell_name(cell), time.perf_counter() - start)
    return ran


GridFactory = Callable[..., Grid]

SETTINGS_FILE = "grid.settings.json"


def data_settings(data: Any) -> dict[str, Any]:
    """A data section (a :class:`~retinassl.config.DataConfig` or a pool with ``source`` and
    ``options``) as a sweep's settings record it: what the data is, not where its folder, manifest or
    cache lie on this machine, nor how many workers read it."""
    out = data.model_dump(mode="json", exclude={"manifest", "cache_dir", "workers"})
    out["options"] = {k: v for k, v in out.get("options", {}).items() if k != "root"}
    return out


def _differs(recorded: Any, now: Any, accepted: list[str] | None = None, key: str = "",
             defaults: Any = None) -> bool:
    """Whether a recorded setting differs from the current one; in mappings only the keys both have
    are compared (a config field added after the record was written, a task not run this time),
    except that a key ``defaults`` (the same nesting) gives a default for must be at that default
    when the record lacks it (the recorded run ran without the field: at its default in effect).
    With ``accepted`` (a run restored from an archive), a path the archive replaced by a stand-in
    matches the current path (:func:`_same_archived_path`) and its key is added to ``accepted``."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        if any(k in defaults and now[k] != defaults[k] for k in now.keys() - recorded.keys()):
            return True
        return any([_differs(recorded[k], now[k], accepted, f"{key}.{k}" if key else str(k), defaults.get(k))
                    for k in sorted(recorded.keys() & now.keys())])
    if isinstance(recorded, list) and isinstance(now, list) and len(recorded) == len(now):
        return any([_differs(r, n, accepted, f"{key}.{i}") for i, (r, n) in enumerate(zip(recorded, now))])
    if (accepted is not None and isinstance(recorded, str) and isinstance(now, str) and recorded != now
            and _same_archived_path(recorded, now)):
        accepted.append(key)
        return False
    return recorded != now


def _same_archived_path(recorded: str, now: str) -> bool:
    """A path the record held before a run archive replaced it (:mod:`retinassl.io.archive`) against
    the current one: a local path the archive could not keep matches any; a data-root placeholder
    matches the same path under today's data root (``RETINASSL_DATA_ROOT``; any path when it is not
    set)."""
    if recorded == LOCAL_PATH:
        return True
    if recorded != PLACEHOLDER and not recorded.startswith(PLACEHOLDER + "/"):
        return False
    root = data_root_from_env()
    if root is None:
        return True
    rest = recorded[len(PLACEHOLDER):].lstrip("/")
    return Path(now).expanduser().resolve() == (root / rest).expanduser().resolve()


def check_unchanged(path: Path, settings: dict[str, Any], what: str,
                    replace: Collection[str] = (), archived: bool = False,
                    defaults: dict[str, Any] | None = None) -> None:
    """Record ``settings`` in ``path``; raise :class:`ConfigError` naming the top-level keys whose
    values differ from those recorded (``what`` names the run in the message). Keys in ``replace``
    (settings no done result depends on yet) and keys the record does not have are recorded anew; a
    recorded key that ``settings`` lacks is kept and not compared. ``archived``: the run was
    restored from an archive, whose records hold stand-ins for paths: those take the current paths,
    named (by key, never by value) in a warning. ``defaults``: the default values of fields added
    later (:meth:`Grid.setting_defaults`); a recorded setting that lacks one is taken at its default."""
    now = json.loads(json.dumps(settings, default=str))
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    accepted: list[str] | None = [] if archived else None
    changed = sorted(k for k in now if k in recorded and k not in replace
                     and _differs(recorded[k], now[k], accepted, k, (defaults or {}).get(k)))
    if accepted:
        log.warning("%s: the paths at %s were not kept by the archive this run was restored from; the ones "
                    "given now are taken as the same files", what, ", ".join(accepted))
    if changed:
        raise ConfigError(f"{what} ({path.parent}) was started with other settings ({', '.join(changed)} "
                          f"changed; recorded in {path.name}): its done results would be mixed with "
                          "results of other settings. Resume it with the settings it was started with, "
                          "or start a new run")
    merged = {**recorded, **now}
    if merged != recorded:
        write_text(path, json.dumps(merged, indent=2, sort_keys=True))


def run_grid(factory: GridFactory, args: Sequence[Any], run: RunDir, workers: int = 1,
             name: str = "sweep") -> None:
    """Prepare, run every missing cell (in ``workers`` processes), finish, and check that no cell is
    left without results.

    Args:
        factory: a module-level function ``factory(*args, run) -> Grid`` (worker processes call it
            to build their own grid, so it and ``args`` must be picklable).
        args: its arguments (before the run directory).
        run: the sweep's run directory.
        workers: processes that share the cells (1: this process alone).
    """
    grid = factory(*args, run)
    settings = grid.settings()
    if settings is not None:
        check_unchanged(run.path / SETTINGS_FILE, settings, f"{name} run", grid.settings_not_used_yet(),
                        archived=(run.path / RESTORED_FILE).is_file(), defaults=grid.setting_defaults())
    grid.prepare()
    for stale in (run.path / "cells").glob("*/claim"):
        stale.unlink()  # claims of an interrupted sweep
    cells = grid.cells()
    done = grid.done()
    log.info("%s: %d cells, %d already done; %d worker(s)", name, len(cells),
             sum(grid.cell_key(c) in done for c in cells), workers)
    if workers > 1:
        from retinassl.sweeps.workers import run_worker_processes

        run_worker_processes(_worker, [(factory, tuple(args), str(run.path), k) for k in range(workers)],
                             f"{name}-worker")
    else:
        work(grid, claims=False)
    grid.finish()
    missing = grid.missing()
    if missing:
        raise RuntimeError(f"{len(missing)} cell(s) have no results (first: {grid.cell_name(missing[0])}); "
                           f"rerun with --resume {run.path}")


def _worker(factory: GridFactory, args: tuple[Any, ...], run_path: str, index: int) -> None:
    """One worker process (logs into the run's log file; it ends if the sweep's process dies)."""
    from retinassl.logs import setup_logging
    from retinassl.sweeps.workers import exit_with_parent

    exit_with_parent()
    setup_logging()
    run = RunDir(Path(run_path))
    handler = run.attach_log_file()
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [worker {index}] %(name)s: "
                                           f"%(message)s"))
    try:
        work(factory(*args, run), claims=True)
    finally:
        logging.getLogger("retinassl").removeHandler(handler)

"""Run directories: ``runs/<name>-<timestamp>/``, one per run, never overwritten.

Layout::

    config.yaml         the resolved configuration
    run.json            name, command, status (running / finished / failed), timings, skipped items
    logs/               csv and TensorBoard logs, log.txt
    checkpoints/        resumable training state (safetensors + JSON)
    encoder/            the trained encoder (safetensors + JSON)
    predictions/        per-image predictions (CSV)
    results.csv         the results table (see :mod:`retinassl.io.results`)
    report/             HTML report, figures

A run is created with an exclusive ``mkdir``, so two runs started in the same second get distinct
directories; ``RunDir.resume`` reopens an existing one.

Under DDP (see :mod:`retinassl.launch`) only rank 0 creates the directory and writes ``run.json``;
the other ranks open the same directory (checkpoints and ``--resume`` are shared), log to
``logs/log-rank<r>.txt`` and leave ``run.json`` and ``config.yaml`` alone. Lightning's launcher
passes the directory to the ranks it starts (``$RETINASSL_RUN_DIR``); ranks started by ``srun`` or
``torchrun --rdzv-id ID`` agree on ``<name>-<launch id>`` and wait for rank 0 to create it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from retinassl.atomic import write_text
from retinassl.errors import RunDirError
from retinassl.launch import RUN_DIR_ENV, launch_id, process_rank

log = logging.getLogger(__name__)
RANK_WAIT_SECONDS = 600.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunDir:
    """A run's directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str) -> RunDir:
        """Make ``<root>/<name>-<YYYYmmdd-HHMMSS>[-N]`` exclusively (under DDP: see the module
        docstring)."""
        if not _NAME.match(name):
            raise RunDirError(f"run name {name!r} must be letters, digits, '.', '_' or '-'")
        root = Path(root)
        rank = process_rank()
        launch = launch_id()
        if rank > 0:
            shared = os.environ.get(RUN_DIR_ENV)
            if shared:
                return cls(Path(shared))
            if launch is not None:
                return cls._wait_for(root / f"{name}-{launch}")
            log.warning("rank %d of a distributed launch without a shared run id (use torchrun "
                        "--rdzv-id or srun): it writes its own run directory", rank)
        root.mkdir(parents=True, exist_ok=True)
        stamp = launch if launch is not None else _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = root / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
            try:
                path.mkdir()
            except FileExistsError:
                if launch is not None:
                    raise RunDirError(f"{path} exists already: a run of this launch id was started "
                                      f"before; use --resume {path} or a new id") from None
                continue
            run = cls(path)
            run.update_status(status="running", name=name, started=_now(), pid=os.getpid())
            os.environ[RUN_DIR_ENV] = str(path)  # for the ranks Lightning's launcher starts
            return run
        raise RunDirError(f"could not create a new run directory under {root}")

    @classmethod
    def _wait_for(cls, path: Path) -> RunDir:
        """The run directory rank 0 creates at ``path`` (for ranks > 0 of srun/torchrun launches)."""
        deadline = time.monotonic() + RANK_WAIT_SECONDS
        while not (path / "run.json").is_file():
            if time.monotonic() > deadline:
                raise RunDirError(f"rank 0 did not create {path} within {RANK_WAIT_SECONDS:.0f} s")
            time.sleep(0.5)
        return cls(path)

    @classmethod
    def resume(cls, path: str | Path) -> RunDir:
        """Reopen an existing run directory (for ``--resume``)."""
        path = Path(path)
        if not (path / "run.json").is_file():
            raise RunDirError(f"{path} is not a run directory (no run.json)")
        run = cls(path)
        run.update_status(status="running", resumed=_now(), pid=os.getpid())
        if process_rank() == 0:
            os.environ[RUN_DIR_ENV] = str(path)
        return run

    # -- well-known places ----------------------------------------------------------------------
    def sub(self, name: str) -> Path:
        """A subdirectory, created on first use."""
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def results_file(self) -> Path:
        return self.path / "results.csv"

    @property
    def checkpoints(self) -> Path:
        return self.sub("checkpoints")

    @property
    def encoder_dir(self) -> Path:
        return self.path / "encoder"

    @property
    def logs(self) -> Path:
        return self.sub("logs")

    @property
    def report_dir(self) -> Path:
        return self.sub("report")

    @property
    def predictions(self) -> Path:
        return self.sub("predictions")

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def update_status(self, **fields: Any) -> None:
        """Merge ``fields`` into ``run.json`` (atomically; only on rank 0 under DDP)."""
        if process_rank() > 0:
            return
        data = self.status()
        data.update(fields)
        write_text(self.path / "run.json", json.dumps(data, indent=2, default=str))

    def write_config(self, yaml_text: str) -> None:
        if process_rank() == 0:
            write_text(self.config_file, yaml_text)

    def attach_log_file(self) -> logging.Handler:
        """Send the ``retinassl`` logger to ``logs/log.txt`` as well; returns the handler."""
        rank = process_rank()
        handler = logging.FileHandler(self.logs / ("log.txt" if rank == 0 else f"log-rank{rank}.txt"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("retinassl").addHandler(handler)
        return handler

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")

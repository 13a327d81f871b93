"""Run directories: ``runs/<name>-<timestamp>/``, one per run, never overwritten.

Layout::

    config.yaml         the resolved configuration
    run.json            name, command, status (running / finished / failed), timings, skipped items
    logs/               csv and TensorBoard logs, log.txt
    checkpoints/        resumable training state (safetensors + JSON)
    encoder/            the trained encoder (safetensors + JSON)
    predictions/        per-image predictions (CSV)
    results.csv         the results table (see :mod:`retinassl.results`)
    report/             HTML report, figures

A run is created with an exclusive ``mkdir``, so two runs started in the same second get distinct
directories; ``RunDir.resume`` reopens an existing one.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .atomic import write_text
from .errors import RunDirError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunDir:
    """A run's directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str) -> RunDir:
        """Make ``<root>/<name>-<YYYYmmdd-HHMMSS>[-N]`` exclusively."""
        if not _NAME.match(name):
            raise RunDirError(f"run name {name!r} must be letters, digits, '.', '_' or '-'")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = root / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
            try:
                path.mkdir()
            except FileExistsError:
                continue
            run = cls(path)
            run.update_status(status="running", name=name, started=_now(), pid=os.getpid())
            return run
        raise RunDirError(f"could not create a new run directory under {root}")

    @classmethod
    def resume(cls, path: str | Path) -> RunDir:
        """Reopen an existing run directory (for ``--resume``)."""
        path = Path(path)
        if not (path / "run.json").is_file():
            raise RunDirError(f"{path} is not a run directory (no run.json)")
        run = cls(path)
        run.update_status(status="running", resumed=_now(), pid=os.getpid())
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
        """Merge ``fields`` into ``run.json`` (atomically)."""
        data = self.status()
        data.update(fields)
        write_text(self.path / "run.json", json.dumps(data, indent=2, default=str))

    def write_config(self, yaml_text: str) -> None:
        write_text(self.config_file, yaml_text)

    def attach_log_file(self) -> logging.Handler:
        """Send the ``retinassl`` logger to ``logs/log.txt`` as well; returns the handler."""
        handler = logging.FileHandler(self.logs / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("retinassl").addHandler(handler)
        return handler

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")

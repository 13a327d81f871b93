"""A CSV metrics log (``logs/csv/metrics.csv``) that survives interruption.

Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` buffers rows (written every 100 steps)
and, when it finds an existing ``metrics.csv``, deletes it: a run killed with ``kill -9`` or
SIGTERM lost its buffered rows, and ``--resume`` lost every row of the earlier parts. This logger
appends every logged step at once, and a resumed run keeps the earlier rows: the first rows it
writes replace only the rows of the steps it repeats (those after the checkpoint it resumed from).
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from retinassl.atomic import write_text


class KeepingWriter(ExperimentWriter):
    """Lightning's writer without the deletion of an existing file; see the module docstring."""

    def __init__(self, log_dir: str) -> None:
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, _ExperimentWriter.NAME_METRICS_FILE)
        os.makedirs(log_dir, exist_ok=True)
        self._continued = False
        from lightning.fabric.utilities.cloud_io import get_filesystem

        self._fs = get_filesystem(log_dir)

    def _earlier_rows(self) -> list[dict[str, str]]:
        if not os.path.isfile(self.metrics_file_path):
            return []
        with open(self.metrics_file_path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            for key in reader.fieldnames or []:
                if key not in self.metrics_keys:
                    self.metrics_keys.append(key)
        return rows

    def save(self) -> None:
        """Append the buffered rows; the first save of a resumed run also drops the earlier rows of
        the steps it logs again (rewriting the file atomically)."""
        if not self.metrics:
            return
        if not self._continued:
            self._continued = True
            earlier = self._earlier_rows()
            if earlier:
                first = min(float(m.get("step", 0)) for m in self.metrics)
                kept = [r for r in earlier if not r.get("step") or float(r["step"]) < first]
                self._record_new_keys()
                self._write(kept + self.metrics)
                self.metrics = []
                return
        if self._record_new_keys() and os.path.isfile(self.metrics_file_path):
            self._write(self._earlier_rows() + self.metrics)
        else:
            exists = os.path.isfile(self.metrics_file_path)
            with open(self.metrics_file_path, "a" if exists else "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
                if not exists:
                    writer.writeheader()
                writer.writerows(self.metrics)
                fh.flush()
        self.metrics = []

    def _write(self, rows: list[dict[str, Any]]) -> None:
        import io

        self.metrics_keys.sort()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_file_path, buffer.getvalue())


class KeepingCSVLogger(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` writing through :class:`KeepingWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> KeepingWriter:  # type: ignore[override]
        if self._experiment is None:
            self._experiment = KeepingWriter(log_dir=self.log_dir)
        return self._experiment


"""The results table: one row per (experiment, task, method, init, protocol, label fraction, seed,
fold, metric) with its value. Reports, plots and statistics read only this table and the prediction
files, so a report can always be rebuilt from results alone.

Rows are appended atomically under a file lock, so several processes (a sweep's workers) can write
to the same table and a killed process never leaves half a row.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from retinassl.atomic import file_lock, write_text
from retinassl.launch import process_rank
from retinassl.errors import DataError

RESULT_COLUMNS: tuple[str, ...] = ("experiment", "task", "method", "init", "protocol", "fraction",
                                   "n_labelled", "seed", "fold", "metric", "value")


def result_row(*, metric: str, value: float, **fields: Any) -> dict[str, Any]:
    """A results-table row; unknown field names are an error (one name per thing)."""
    unknown = set(fields) - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown result fields {sorted(unknown)}; allowed: {RESULT_COLUMNS}")
    row: dict[str, Any] = {c: "" for c in RESULT_COLUMNS}
    row.update(fields)
    row["metric"] = metric
    row["value"] = float(value)
    return row


def append_results(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to the table at ``path`` (created with a header if missing)."""
    rows = list(rows)
    if not rows:
        return
    path = Path(path)
    new = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    if process_rank() > 0:  # under DDP every rank evaluates; rank 0 records
        return
    with file_lock(path):
        old = path.read_text() if path.is_file() else ""
        buf = io.StringIO()
        new.to_csv(buf, index=False, header=not old)
        write_text(path, old + buf.getvalue())


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a results table (empty fields become NaN for numeric columns, '' for text)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("results table does not exist", path=path)
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [c for c in ("metric", "value") if c not in frame.columns]
    if missing:
        raise DataError(f"not a results table: missing column(s) {missing}", path=path)
    for c in RESULT_COLUMNS:
        if c not in frame.columns:
            frame[c] = math.nan if c in ("fraction", "n_labelled", "seed", "fold") else ""
    for c in ("experiment", "task", "method", "init", "protocol", "metric"):
        frame[c] = frame[c].astype(object).where(frame[c].notna(), "").astype(str)
    return frame

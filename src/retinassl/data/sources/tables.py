"""Reading the label tables that datasets ship, and errors that name the CSV line at fault.

Public label CSVs are untidy: a UTF-8 byte-order mark before the first header (RFMiD), CRLF line
endings (IDRiD test labels), header names with trailing spaces (IDRiD's ``"Risk of macular edema "``),
runs of empty trailing columns (IDRiD training labels), blank lines at the end. :func:`read_table`
absorbs all of these and returns every cell as a stripped string, plus the line number of each row so
that a later problem can be reported as ``labels.csv: line 17: ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from retinassl.errors import DataError
from retinassl.data.manifest import REQUIRED_COLUMNS, Manifest

LINE = "_line"  # column added by read_table: 1-based line of the row in the file (header = line 1)


def line_error(problem: str, path: str | Path, line: int | None, item: str | None = None) -> DataError:
    """A :class:`DataError` naming the file and, when known, the line and item:
    ``labels.csv: line 7: id 'x': problem`` (``item`` is also kept as the error's ``item``)."""
    where = "".join([f"line {line}: " if line is not None else "",
                     f"id {item!r}: " if item is not None else ""])
    error = DataError(where + problem, path=path)
    error.item = item
    return error


def read_table(path: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV into a DataFrame of stripped strings (empty cell = ``""``) with a ``_line`` column.

    Header names are stripped of surrounding spaces; columns with an empty header whose cells are
    all empty are dropped; blank rows are dropped. Line numbers assume no quoted cell spans lines.

    Args:
        path: the CSV file (UTF-8, optionally with a byte-order mark; LF or CRLF).
        required: header names that must be present (after stripping).

    Raises:
        DataError: missing or unreadable file, duplicate header names, missing required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("CSV file does not exist", path=path)
    try:
        # header=None: pandas must not take a first column as the index when rows are longer than
        # the header (it would silently shift every column); a ragged row is a parser error.
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, na_filter=False,
                            encoding="utf-8-sig", skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"not a readable CSV table ({exc})", path=path) from None
    frame.columns = [str(c) for c in frame.iloc[0].fillna("")]
    frame = frame.iloc[1:].fillna("").reset_index(drop=True)
    names = [str(c).strip() for c in frame.columns]
    keep = []
    for position, name in enumerate(names):
        column = frame.iloc[:, position].astype(str).str.strip()
        unnamed = name == ""
        if unnamed and (column == "").all():
            continue
        if unnamed:
            raise line_error(f"column {position + 1} has values but no header name", path, 1)
        keep.append(position)
    frame = frame.iloc[:, keep].copy()
    frame.columns = [names[p] for p in keep]
    seen: set[str] = set()
    for name in frame.columns:
        if name in seen:
            raise line_error(f"header {name!r} appears twice", path, 1)
        seen.add(name)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise line_error(f"missing column(s) {missing}; the header has {list(frame.columns)}",
                         path, 1)
    for name in frame.columns:
        frame[name] = frame[name].astype(str).str.strip()
    frame[LINE] = range(2, len(frame) + 2)
    blank = (frame.drop(columns=LINE) == "").all(axis=1)
    return frame[~blank].reset_index(drop=True)


def parse_int(value: str, column: str, low: int, high: int, path: Path, line: int) -> int:
    """An integer cell in ``[low, high]``; an error naming the line otherwise (also for empty)."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (number == number and number == int(number) and low <= number <= high):
        raise line_error(f"{column} is {value!r}; expected an integer in [{low}, {high}]", path, line)
    return int(number)


def manifest_with_lines(records: Sequence[dict], root: Path, name: str, lines: Sequence[int],
                        table: Path, check_files: bool = True) -> Manifest:
    """Build and validate a manifest whose row ``i`` came from line ``lines[i]`` of ``table``.

    A validation error about a row is re-raised naming the CSV and its line instead of the row.
    """
    try:
        return Manifest.from_records(records, root, name=name, check_files=check_files)
    except DataError as exc:
        if exc.row is None or not 0 <= exc.row < len(lines):
            raise
        raise line_error(exc.problem, table, lines[exc.row], item=exc.item) from None


def arrange(frame: pd.DataFrame) -> pd.DataFrame:
    """The manifest's required columns first (``id, image, patient, eye, split``), then the others
    in their existing order."""
    first = [c for c in REQUIRED_COLUMNS if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]

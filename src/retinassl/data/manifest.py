"""The Manifest: one row per image, the single description of a dataset that every stage reads.

A manifest is a :class:`pandas.DataFrame` plus a ``root`` directory. Every file path in it is
relative to ``root`` and must stay inside it (a path that escapes the root is an error), so that
a manifest can be moved with its data and never reaches files it was not meant to.

Columns
-------
required
    ``id`` (unique, stable, safe as a file-name stem), ``image``, ``patient``, ``eye`` (``L``, ``R``
    or empty), ``split`` (``train``, ``val``, ``test`` or empty).
labels (optional; an empty cell means "not labelled")
    ``abnormal`` {0,1}, ``dr_grade`` {0..4}, ``dme`` {0..2}, and multi-hot ``disease_<NAME>`` {0,1};
    ``dr_stage`` {0: no DR, 1: NPDR, 2: PDR} and ``dr_any`` {0,1} for three-level DR labels, which
    are not ``dr_grade`` (where 2 is moderate NPDR).
masks (optional paths)
    ``mask_MA``, ``mask_HE``, ``mask_EX``, ``mask_SE``, ``mask_OD``, ``mask_vessels``,
    ``mask_vessels_2`` (second observer), ``mask_fov``.
paired modalities (optional paths)
    ``oct_volume``, ``thickness_map``, ``ir_image``, ``oct_bscan`` (a single B-scan image of the
    same eye: no spacing or localizer, so not a volume).
anything else
    free metadata (``dataset``, ``od_x``, ``fovea_y``...), carried along untouched.

The CSV on disk is accompanied by ``<name>.root`` holding the root directory, so a saved manifest
loads back exactly.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.atomic import write_text
from retinassl.errors import DataError

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "image", "patient", "eye", "split")
LABEL_RANGES: dict[str, tuple[int, int]] = {"abnormal": (0, 1), "dr_grade": (0, 4), "dme": (0, 2),
                                             "dr_stage": (0, 2), "dr_any": (0, 1)}
DISEASE_PREFIX = "disease_"
LESION_TYPES: tuple[str, ...] = ("MA", "HE", "EX", "SE")
MASK_COLUMNS: tuple[str, ...] = tuple(f"mask_{t}" for t in LESION_TYPES) + (
    "mask_OD", "mask_vessels", "mask_vessels_2", "mask_fov")
PAIRED_COLUMNS: tuple[str, ...] = ("oct_volume", "thickness_map", "ir_image", "oct_bscan")
PATH_COLUMNS: tuple[str, ...] = ("image",) + MASK_COLUMNS + PAIRED_COLUMNS
SPLITS: tuple[str, ...] = ("train", "val", "test", "")
EYES: tuple[str, ...] = ("L", "R", "")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def label_columns(columns: Iterable[str]) -> list[str]:
    """The label columns among ``columns``: the known scalar labels and every ``disease_*``."""
    return [c for c in columns if c in LABEL_RANGES or c.startswith(DISEASE_PREFIX)]


def label_range(column: str) -> tuple[int, int]:
    """Inclusive (low, high) integer range of a label column."""
    if column.startswith(DISEASE_PREFIX):
        return (0, 1)
    if column in LABEL_RANGES:
        return LABEL_RANGES[column]
    raise KeyError(f"{column!r} is not a label column")


def is_missing(value: object) -> bool:
    """True for the empty cell of a manifest (None, NaN, or an empty string)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


@dataclass
class Manifest:
    """A validated table of images and the directory its paths are relative to.

    Args:
        frame: one row per image (see the module docstring for the columns).
        root: directory every path column is relative to.
        name: a short name used in messages (e.g. the CSV file or the source).
    """

    frame: pd.DataFrame
    root: Path
    name: str = "manifest"

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.frame = self.frame.reset_index(drop=True)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Sequence[dict], root: str | Path, name: str = "manifest",
                     check_files: bool = True) -> Manifest:
        """Build and validate a manifest from a list of row dicts (paths relative to ``root``)."""
        if not records:
            raise DataError("the dataset is empty: no images were found", path=root)
        frame = pd.DataFrame.from_records(list(records))
        for column in ("patient", "eye", "split"):
            if column not in frame.columns:
                frame[column] = ""
        manifest = cls(frame, Path(root), name)
        manifest.validate(check_files=check_files)
        return manifest

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].tolist()

    @property
    def patients(self) -> np.ndarray:
        """``(N,)`` patient of each row as a string (empty: unknown, the row is its own patient)."""
        return self.frame["patient"].astype(str).to_numpy()

    def path(self, row: int, column: str = "image") -> Path | None:
        """Absolute path of ``column`` in ``row``, or None when the cell is empty."""
        value = self.frame.at[row, column] if column in self.frame.columns else None
        if is_missing(value):
            return None
        return self.root / str(value)

    def labels(self, column: str) -> np.ndarray:
        """Integer labels of ``column`` (-1 where the cell is empty)."""
        if column not in self.frame.columns:
            raise DataError(f"the manifest has no label column {column!r}; it has "
                            f"{label_columns(self.frame.columns) or 'no label columns'}",
                            path=self.name)
        values = pd.to_numeric(self.frame[column], errors="coerce")
        return values.fillna(-1).astype(np.int64).to_numpy()

    def values(self, column: str) -> np.ndarray:
        """Real-valued labels of ``column`` (a regression target such as a thickness; NaN where the
        cell is empty or not a number)."""
        if column not in self.frame.columns:
            raise DataError(f"the manifest has no column {column!r}; it has "
                            f"{label_columns(self.frame.columns) or 'no label columns'}", path=self.name)
        return pd.to_numeric(self.frame[column], errors="coerce").to_numpy(dtype=np.float64)

    def require_values(self, column: str) -> np.ndarray:
        """:meth:`values` of ``column``; an error naming the first row without a finite value."""
        values = self.values(column)
        missing = np.flatnonzero(~np.isfinite(values))
        if len(missing):
            r = int(missing[0])
            raise DataError(f"{column} is missing or not a number for {len(missing)} row(s); a regression "
                            f"target needs a value for every image", path=self.name, row=r,
                            item=self.frame.at[r, "id"])
        return values

    def require_labels(self, column: str) -> np.ndarray:
        """Labels of ``column``; an error naming the first row without one if any is missing."""
        labels = self.labels(column)
        missing = np.flatnonzero(labels < 0)
        if len(missing):
            r = int(missing[0])
            raise DataError(f"{column} is missing for {len(missing)} row(s); the task needs a label "
                            f"for every image", path=self.name, row=r, item=self.frame.at[r, "id"])
        return labels

    def subset(self, rows: Sequence[int] | np.ndarray | pd.Series) -> Manifest:
        """A manifest with the given rows (positions or a boolean mask), same root."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            frame = self.frame[rows]
        else:
            frame = self.frame.iloc[rows]
        return Manifest(frame.copy(), self.root, self.name)

    def split(self, name: str) -> Manifest:
        """The rows whose ``split`` equals ``name``."""
        return self.subset((self.frame["split"] == name).to_numpy())

    def fingerprint(self) -> str:
        """A short hash of ids, paths and labels (what a checkpoint records as its training data)."""
        import hashlib

        cols = [c for c in self.frame.columns if c in REQUIRED_COLUMNS or c in PATH_COLUMNS
                or c in label_columns(self.frame.columns)]
        text = self.frame[sorted(cols)].astype(str).to_csv(index=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- validation ---------------------------------------------------------------------------
    def validate(self, check_files: bool = True) -> None:
        """Check columns, ids, labels and paths; raise :class:`DataError` naming the row at fault.

        Args:
            check_files: also check that every referenced file exists (not its content: decoding
                problems are reported when the image is first read).
        """
        df = self.frame
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"missing required column(s) {missing}; a manifest needs "
                            f"{list(REQUIRED_COLUMNS)}", path=self.name)
        if len(df) == 0:
            raise DataError("the manifest is empty", path=self.name)
        for r, value in enumerate(df["id"]):
            if is_missing(value) or not _ID_PATTERN.match(str(value)):
                raise DataError(f"id {value!r} is empty or not a safe name (letters, digits, '.', "
                                f"'_', '-')", path=self.name, row=r)
        dup = df["id"].duplicated(keep="first")
        if dup.any():
            r = int(np.flatnonzero(dup.to_numpy())[0])
            first = int(np.flatnonzero((df["id"] == df.at[r, "id"]).to_numpy())[0])
            raise DataError(f"duplicate id {df.at[r, 'id']!r} (first seen in row {first})",
                            path=self.name, row=r)
        for column, allowed in (("split", SPLITS), ("eye", EYES)):
            for r, value in enumerate(df[column]):
                text = "" if is_missing(value) else str(value)
                if text not in allowed:
                    raise DataError(f"{column} is {value!r}; allowed: {list(allowed)}",
                                    path=self.name, row=r, item=df.at[r, "id"])
        df["split"] = df["split"].map(lambda v: "" if is_missing(v) else str(v))
        df["eye"] = df["eye"].map(lambda v: "" if is_missing(v) else str(v))
        df["patient"] = df["patient"].map(lambda v: "" if is_missing(v) else str(v))
        for column in label_columns(df.columns):
            self._validate_label_column(column)
        for column in PATH_COLUMNS:
            if column in df.columns:
                self._validate_path_column(column, check_files)

    def _validate_label_column(self, column: str) -> None:
        low, high = label_range(column)
        df = self.frame
        for r, value in enumerate(df[column]):
            if is_missing(value):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{column} is {value!r}, not a number", path=self.name, row=r,
                                item=df.at[r, "id"]) from None
            if not math.isfinite(number) or number != int(number) or not low <= number <= high:
                shown = int(number) if math.isfinite(number) and number == int(number) else value
                raise DataError(f"{column} is {shown!r}; expected an integer in [{low}, {high}]",
                                path=self.name, row=r, item=df.at[r, "id"])

    def _validate_path_column(self, column: str, check_files: bool) -> None:
        df = self.frame
        for r, value in enumerate(df[column]):
            if is_missing(value):
                if column == "image":
                    raise DataError("image path is empty", path=self.name, row=r,
                                    item=df.at[r, "id"])
                continue
            rel = Path(str(value))
            full = Path(os.path.normpath(self.root / rel))
            if rel.is_absolute() or not full.is_relative_to(self.root):
                raise DataError(f"{column} path {str(value)!r} escapes the dataset root {self.root}",
                                path=self.name, row=r, item=df.at[r, "id"])
            if check_files and not full.is_file():
                raise DataError(f"{column} file does not exist: {full}", path=self.name, row=r,
                                item=df.at[r, "id"])

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the manifest as CSV plus ``<path>.root`` (atomically). Returns the CSV path."""
        path = Path(path)
        write_text(path, self.frame.to_csv(index=False))
        write_text(path.with_name(path.name + ".root"), str(self.root) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, root: str | Path | None = None,
             check_files: bool = True) -> Manifest:
        """Read a manifest CSV. ``root`` defaults to ``<path>.root`` or else the CSV's directory."""
        path = Path(path)
        if not path.is_file():
            raise DataError("manifest file does not exist", path=path)
        if root is None:
            sidecar = path.with_name(path.name + ".root")
            root = sidecar.read_text().strip() if sidecar.is_file() else path.parent
        try:
            frame = pd.read_csv(path, dtype={"id": str, "patient": str, "eye": str, "split": str},
                                keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"not a readable CSV table ({exc})", path=path) from None
        manifest = cls(frame, Path(root), name=str(path))
        manifest.validate(check_files=check_files)
        return manifest

    @classmethod
    def concat(cls, manifests: Sequence[Manifest], name: str = "combined") -> Manifest:
        """Stack manifests (ids must stay unique) under their common root directory."""
        if not manifests:
            raise DataError("nothing to combine: no manifests given")
        root = Path(os.path.commonpath([str(m.root) for m in manifests]))
        frames = []
        for m in manifests:
            frame = m.frame.copy()
            prefix = m.root.relative_to(root)
            for column in PATH_COLUMNS:
                if column in frame.columns:
                    frame[column] = frame[column].map(
                        lambda v, p=prefix: v if is_missing(v) else str(p / str(v)))
            frames.append(frame)
        combined = cls(pd.concat(frames, ignore_index=True), root, name)
        combined.validate(check_files=False)
        return combined

"""EyePACS, as released for the Kaggle "Diabetic Retinopathy Detection" competition (2015).

35,126 training photographs (``train/<patient>_<left|right>.jpeg``, both eyes of 17,563 patients)
graded 0-4 for DR by one clinician (0 none, 1 mild, 2 moderate, 3 severe, 4 proliferative), listed in
``trainLabels.csv`` (``image,level``, e.g. ``10_left,0``). The images may not be redistributed:
``../shared/data/kaggle_eyepacs_dr_labels`` holds the label file only, so :func:`read_eyepacs_labels`
works on the CSV alone and :func:`load_eyepacs` needs the user's own image folder.

Manifest: ids ``eyepacs-10_left``, ``patient`` ``eyepacs-10`` (both eyes of a patient share it, so
patient-level splits keep them together), ``eye`` L/R, ``dr_grade``, ``abnormal = dr_grade > 0``.

Cite: Cuadros J., Bresnick G., "EyePACS: an adaptable telemedicine system for diabetic retinopathy
screening", J Diabetes Sci Technol 3(3):509-516, 2009; Kaggle, "Diabetic Retinopathy Detection",
2015 (https://www.kaggle.com/c/diabetic-retinopathy-detection).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from retinassl.errors import DataError
from retinassl.data.manifest import Manifest
from retinassl.data.sources.tables import LINE, line_error, manifest_with_lines, parse_int, read_table

log = logging.getLogger(__name__)

DATASET = "eyepacs"
EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".JPEG", ".JPG", ".PNG")
_NAME = re.compile(r"(?P<patient>[0-9A-Za-z]+)_(?P<eye>left|right)")


def _read(csv: Path) -> pd.DataFrame:
    table = read_table(csv, required=("image", "level"))
    rows = []
    seen: dict[str, int] = {}
    for row in table.to_dict("records"):
        name, line = row["image"], row[LINE]
        match = _NAME.fullmatch(name)
        if match is None:
            raise line_error(f"image {name!r} is not <patient>_left or <patient>_right", csv, line)
        if name in seen:
            raise line_error(f"image {name!r} is listed twice (first on line {seen[name]})", csv,
                             line)
        seen[name] = line
        rows.append({"id": name, "patient": match.group("patient"),
                     "eye": "L" if match.group("eye") == "left" else "R",
                     "dr_grade": parse_int(row["level"], "level", 0, 4, csv, line), LINE: line})
    if not rows:
        raise DataError("the label CSV has no rows", path=csv)
    return pd.DataFrame.from_records(rows)


def read_eyepacs_labels(csv: str | Path) -> pd.DataFrame:
    """The EyePACS label CSV as a table: ``id`` (image name), ``patient``, ``eye`` (L/R),
    ``dr_grade`` (0-4).

    Raises:
        DataError: missing ``image``/``level`` column, a name not ``<patient>_left|right``, a level
            outside 0-4 or not a number, a repeated image; each naming the CSV line.
    """
    return _read(Path(csv)).drop(columns=LINE)


def load_eyepacs(root: str | Path, labels_csv: str | Path, skip_missing: bool = False,
                 split: str = "") -> Manifest:
    """EyePACS images listed in ``labels_csv`` and found in ``root`` as ``<image>.jpeg/.jpg/.png``.

    Args:
        root: the image folder (e.g. Kaggle's ``train/``).
        labels_csv: ``trainLabels.csv``.
        skip_missing: leave out labelled images that are not on disk (their number is logged as a
            warning) instead of failing.
        split: the ``split`` of every row (default empty: make a patient-level split later).

    Raises:
        DataError: the label errors of :func:`read_eyepacs_labels`; a labelled image not on disk
            (naming the CSV line and how many are missing) unless ``skip_missing``; no image at all.
    """
    root, csv = Path(root), Path(labels_csv)
    if not root.is_dir():
        raise DataError("EyePACS image folder does not exist", path=root)
    labels = _read(csv)
    present = {p.name for p in root.iterdir()}
    records, lines, missing = [], [], []
    for row in labels.to_dict("records"):
        name = next((row["id"] + e for e in EXTENSIONS if row["id"] + e in present), None)
        if name is None:
            missing.append(row)
            continue
        records.append({"id": f"{DATASET}-{row['id']}", "image": name,
                        "patient": f"{DATASET}-{row['patient']}", "eye": row["eye"],
                        "split": split, "dataset": DATASET, "dr_grade": row["dr_grade"],
                        "abnormal": int(row["dr_grade"] > 0)})
        lines.append(row[LINE])
    if missing and not skip_missing:
        first = missing[0]
        raise line_error(f"{len(missing)} of {len(labels)} labelled images are not in {root} "
                         f"(first: {first['id']} with extension {'/'.join(EXTENSIONS[:3])}); pass "
                         f"skip_missing=True to leave them out", csv, first[LINE])
    if missing:
        log.warning("eyepacs: skipped %d of %d labelled images not found in %s (first: %s)",
                    len(missing), len(labels), root, missing[0]["id"])
    if not records:
        raise DataError(f"none of the {len(labels)} labelled images is in {root}", path=csv)
    return manifest_with_lines(records, root, DATASET, lines, csv)

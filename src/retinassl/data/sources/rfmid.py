"""RFMiD, the Retinal Fundus Multi-disease Image Dataset (Pachade et al., Data 6(2):14, 2021; CC BY 4.0).

3,200 fundus images with 46 binary labels: ``Disease_Risk`` (any abnormality) and 45 disease
columns (DR, ARMD, MH, DN, MYA, BRVO, TSLN, ...). Official layout: per set a label CSV
(``RFMiD_Training_Labels.csv``: ``ID, Disease_Risk, DR, ARMD, ...``, 1,920 rows for the training
set) and a folder of ``<ID>.png`` images (``Training/``, ``Validation/``, ``Test/``). The copy in
``../shared/data/rfmid_subset`` has the full training label table but only images 1-10 (in
``Training_Set/``); the CSV starts with a UTF-8 byte-order mark.

Manifest: ids ``rfmid-<split>-<ID>``, ``abnormal`` from ``Disease_Risk``, one ``disease_<NAME>``
column per disease (all 45, in the CSV's order), one row per image *present on disk* (a manifest row
needs an image). :func:`read_rfmid_labels` returns the whole label table for label statistics.

Cite: Pachade S. et al., "Retinal Fundus Multi-Disease Image Dataset (RFMiD): A Dataset for
Multi-Disease Detection Research", Data 6(2):14, 2021.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from retinassl.errors import DataError
from retinassl.data.manifest import DISEASE_PREFIX, Manifest
from retinassl.data.sources.files import is_image, relative, stem
from retinassl.data.sources.tables import LINE, line_error, parse_int, read_table

log = logging.getLogger(__name__)

DATASET = "rfmid"
ID_COLUMN = "ID"
RISK_COLUMN = "Disease_Risk"


def read_rfmid_labels(csv: str | Path) -> pd.DataFrame:
    """The RFMiD label table: ``ID`` (str), ``Disease_Risk`` and the disease columns (int 0/1),
    one row per CSV row (for label statistics; images are not needed).

    Raises:
        DataError: missing ``ID``/``Disease_Risk`` column, no disease column, a label that is not
            0/1, an empty or repeated ID; each naming the CSV line.
    """
    csv = Path(csv)
    table = read_table(csv, required=(ID_COLUMN, RISK_COLUMN))
    labels = [c for c in table.columns if c not in (ID_COLUMN, LINE)]
    if len(labels) < 2:
        raise line_error("no disease columns after Disease_Risk", csv, 1)
    seen: dict[str, int] = {}
    for row in table.to_dict("records"):
        key, line = row[ID_COLUMN], row[LINE]
        if not key:
            raise line_error("ID is empty", csv, line)
        if key in seen:
            raise line_error(f"ID {key!r} appears twice (first on line {seen[key]})", csv, line)
        seen[key] = line
        for column in labels:
            parse_int(row[column], column, 0, 1, csv, line)
    for column in labels:
        table[column] = table[column].astype(float).astype(int)
    return table.drop(columns=LINE)


def _default_csv(root: Path) -> Path:
    found = sorted(root.rglob("RFMiD_*Labels.csv"))
    if len(found) != 1:
        listed = ", ".join(str(p.relative_to(root)) for p in found) or "none"
        raise DataError(f"cannot choose the RFMiD label CSV (found: {listed}); pass labels_csv=",
                        path=root)
    return found[0]


def _index_images(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not is_image(path):
            continue
        key = stem(path.name)
        if key in index:
            raise DataError(f"image {key!r} exists in two folders ({index[key].parent} and "
                            f"{path.parent}); pass images= to choose one", path=path)
        index[key] = path
    return index


def load_rfmid(root: str | Path, labels_csv: str | Path | None = None,
               images: str | Path | None = None, split: str = "train") -> Manifest:
    """RFMiD images with their 45 disease labels and ``abnormal`` (= ``Disease_Risk``).

    Args:
        root: the dataset folder; manifest paths are relative to it.
        labels_csv: the label CSV (default: the one ``RFMiD_*Labels.csv`` under ``root``).
        images: folder of ``<ID>.png`` images (default: searched under ``root``; an ID found in two
            folders is an error).
        split: the ``split`` of every row (``train`` for the training set, ``val``, ``test``).

    Raises:
        DataError: no images on disk for any label row, or the label errors of
            :func:`read_rfmid_labels`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("RFMiD folder does not exist", path=root)
    csv = Path(labels_csv) if labels_csv is not None else _default_csv(root)
    table = read_rfmid_labels(csv)
    diseases = [c for c in table.columns if c not in (ID_COLUMN, RISK_COLUMN, LINE)]
    index = _index_images(Path(images) if images is not None else root)
    records = []
    for row in table.to_dict("records"):
        path = index.get(row[ID_COLUMN])
        if path is None:
            continue
        record = {"id": f"{DATASET}-{split}-{row[ID_COLUMN]}", "image": relative(path, root),
                  "patient": f"{DATASET}-{split}-{row[ID_COLUMN]}", "eye": "", "split": split,
                  "dataset": DATASET, "abnormal": row[RISK_COLUMN]}
        record.update({f"{DISEASE_PREFIX}{d}": row[d] for d in diseases})
        records.append(record)
    if not records:
        raise DataError(f"none of the {len(table)} labelled RFMiD images is on disk under "
                        f"{images or root}", path=csv)
    log.info("rfmid: %d of %d labelled images found on disk", len(records), len(table))
    return Manifest.from_records(records, root, name=DATASET)

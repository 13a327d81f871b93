"""IDRiD, the Indian Diabetic Retinopathy Image Dataset (Porwal et al., Data 3(3):25, 2018; CC BY 4.0).

Layout of the official release (folder and file names as distributed)::

    A. Segmentation/1. Original Images/{a. Training Set, b. Testing Set}/IDRiD_01.jpg ... IDRiD_81.jpg
    A. Segmentation/2. All Segmentation Groundtruths/{a. Training Set, b. Testing Set}/
        {1. Microaneurysms, 2. Haemorrhages, 3. Hard Exudates, 4. Soft Exudates, 5. Optic Disc}/
        IDRiD_01_MA.tif ...                      (.tif officially; other image extensions accepted)
    B. Disease Grading/1. Original Images/{a. Training Set, b. Testing Set}/IDRiD_001.jpg ...
    B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv (and b. ..._Testing)
    C. Localization*/  optic-disc and fovea centres of the part-B images, either the official
        ``*/IDRiD_{OD,Fovea}_Center_{Training,Testing} Set_Markups.csv`` files or one
        ``IDRiD_OD_and_Fovea_centers.csv`` (``image_name`` like ``IDRiD_001_train``, ``od_x``...)
    seg_to_grading_matches.csv (optional; not in the official release): which part-A image is the
        same photograph as which part-B image

Manifest rows (ids say part, split and file name, because names repeat: ``IDRiD_001`` is in both
part-B splits, and part A restarts at ``IDRiD_01``):

* part A (``idrid-A-train-IDRiD_01``): ``abnormal=1`` (every part-A image shows DR), the official
  train/test split, and lesion masks ``mask_MA``, ``mask_HE``, ``mask_EX``, ``mask_SE`` plus
  ``mask_OD``. All four lesion types were annotated on every part-A image, which the column
  ``lesions_annotated`` (``"MA,HE,EX,SE"``) records; an **empty mask cell for a listed type means
  "no such lesion in this image"** (IDRiD_43 has no haemorrhage mask, only 40 images have soft
  exudates), i.e. an all-zero mask, not a missing file. Rows of part B have an empty
  ``lesions_annotated``: their lesions are unknown.
* part B (``idrid-B-test-IDRiD_001``): ``dr_grade`` (0-4), ``dme`` (0-2), ``abnormal = dr_grade > 0``,
  the official split; part C adds ``od_x``, ``od_y``, ``fovea_x``, ``fovea_y`` (pixels in the frame
  of the images as distributed).

Leakage links (all put the linked images into one ``patient`` group, named after the
alphabetically first id of the group, so that a patient-level split keeps them together):

* ``twin`` / ``twin_match``: the part-B image that is the same photograph
  (``same_image``) or the same eye slightly shifted (``same_eye_slightly_shifted``) as a part-A
  image, from ``seg_to_grading_matches.csv``; on part-B rows the matching part-A id(s).
* ``duplicate_of``: the byte-identical part-B pairs of the official release
  (:data:`~retinassl.data.sources.idrid_links.PART_B_IDENTICAL`; some with conflicting grades).
* ``same_eye_as``: further same-eye pairs (different photographs of one eye, shifted or
  re-exposed, some at different disease stages) that :mod:`retinassl.data.duplicates` found and
  that were confirmed by eye (:data:`~retinassl.data.sources.idrid_links.SAME_EYE_FOUND`).

Cite: Porwal P. et al., "Indian Diabetic Retinopathy Image Dataset (IDRiD): A Database for Diabetic
Retinopathy Screening Research", Data 3(3):25, 2018; and Porwal P. et al., "IDRiD: Diabetic
Retinopathy - Segmentation and Grading Challenge", Medical Image Analysis 59:101561, 2020.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.errors import ConfigError, DataError
from retinassl.data.manifest import Manifest, is_missing
from retinassl.data.sources.files import is_image, relative, stem
from retinassl.data.sources.idrid_links import add_links
from retinassl.data.sources.tables import LINE, arrange, line_error, parse_int, read_table

log = logging.getLogger(__name__)

DATASET = "idrid"
SPLIT_FOLDERS: dict[str, str] = {"train": "a. Training Set", "test": "b. Testing Set"}
A_IMAGES = Path("A. Segmentation", "1. Original Images")
A_MASKS = Path("A. Segmentation", "2. All Segmentation Groundtruths")
MASK_FOLDERS: dict[str, str] = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages",
                                "EX": "3. Hard Exudates", "SE": "4. Soft Exudates",
                                "OD": "5. Optic Disc"}
ANNOTATED_LESIONS = "MA,HE,EX,SE"
B_IMAGES = Path("B. Disease Grading", "1. Original Images")
B_LABELS: dict[str, Path] = {
    "train": Path("B. Disease Grading", "2. Groundtruths",
                  "a. IDRiD_Disease Grading_Training Labels.csv"),
    "test": Path("B. Disease Grading", "2. Groundtruths",
                 "b. IDRiD_Disease Grading_Testing Labels.csv")}
B_COLUMNS = ("Image name", "Retinopathy grade", "Risk of macular edema")
MATCHES_CSV = "seg_to_grading_matches.csv"
MATCH_KINDS = ("same_image", "same_eye_slightly_shifted", "no_match")


def image_id(part: str, split: str, name: str) -> str:
    """The manifest id of an IDRiD image: ``idrid-<part>-<split>-<file stem>``."""
    return f"{DATASET}-{part}-{split}-{name}"


def _folder(root: Path, relative_path: Path, what: str) -> Path:
    folder = root / relative_path
    if not folder.is_dir():
        raise DataError(f"{what} folder is missing (expected the official IDRiD layout)",
                        path=folder)
    return folder


def _images(folder: Path) -> dict[str, Path]:
    return {stem(p.name): p for p in sorted(folder.iterdir()) if is_image(p)}


# -- part A ------------------------------------------------------------------------------------
def _part_a(root: Path) -> list[dict]:
    records = []
    for split, split_folder in SPLIT_FOLDERS.items():
        images = _images(_folder(root, A_IMAGES / split_folder, "part-A image"))
        masks: dict[str, dict[str, str]] = {name: {} for name in images}
        for lesion, lesion_folder in MASK_FOLDERS.items():
            folder = _folder(root, A_MASKS / split_folder / lesion_folder, f"part-A {lesion} mask")
            for path in sorted(folder.iterdir()):
                if not is_image(path):
                    continue
                match = re.fullmatch(rf"(.+)_{lesion}", stem(path.name))
                if match is None or match.group(1) not in images:
                    raise DataError(f"a {lesion} mask whose name matches no part-A {split} image "
                                    f"(expected <image>_{lesion}.tif)", path=path)
                masks[match.group(1)][f"mask_{lesion}"] = relative(path, root)
        for name, path in images.items():
            if "mask_OD" not in masks[name]:
                raise DataError(f"part-A image has no optic-disc mask in {MASK_FOLDERS['OD']!r}",
                                path=path)
            records.append({"id": image_id("A", split, name), "image": relative(path, root),
                            "split": split, "dataset": DATASET, "part": "A", "abnormal": 1,
                            **{f"mask_{t}": masks[name].get(f"mask_{t}", "")
                               for t in MASK_FOLDERS},
                            "lesions_annotated": ANNOTATED_LESIONS})
    return records


# -- part B ------------------------------------------------------------------------------------
def _part_b(root: Path) -> list[dict]:
    records = []
    for split, split_folder in SPLIT_FOLDERS.items():
        images = _images(_folder(root, B_IMAGES / split_folder, "part-B image"))
        table_path = root / B_LABELS[split]
        table = read_table(table_path, required=B_COLUMNS)
        labelled: dict[str, int] = {}
        for row in table.to_dict("records"):
            line = row[LINE]
            name, grade, dme = (row[c] for c in B_COLUMNS)
            if name not in images:
                raise line_error(f"image {name!r} is not in {B_IMAGES / split_folder}", table_path,
                                 line)
            if name in labelled:
                raise line_error(f"image {name!r} is listed twice (first on line {labelled[name]})",
                                 table_path, line)
            labelled[name] = line
            grade_value = parse_int(grade, "Retinopathy grade", 0, 4, table_path, line)
            records.append({"id": image_id("B", split, name),
                            "image": relative(images[name], root), "split": split,
                            "dataset": DATASET, "part": "B", "abnormal": int(grade_value > 0),
                            "dr_grade": grade_value,
                            "dme": parse_int(dme, "Risk of macular edema", 0, 2, table_path, line)})
        unlabelled = [n for n in images if n not in labelled]
        if unlabelled:
            raise DataError(f"{len(unlabelled)} part-B {split} image(s) have no row in the labels "
                            f"CSV (first: {unlabelled[0]})", path=table_path)
    return records


# -- part C ------------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _part_c(root: Path) -> dict[str, dict[str, float]]:
    """Optic-disc and fovea centres by part-B id, from either supported layout."""
    folders = sorted(p for p in root.glob("C.*") if p.is_dir())
    tables = [p for folder in folders for p in sorted(folder.rglob("*.csv"))]
    if not tables:
        raise DataError("part C (localisation) requested but no CSV found in a 'C. ...' folder; "
                        "pass parts=('A', 'B') to load without it", path=root)
    centres: dict[str, dict[str, float]] = {}
    for path in tables:
        table = read_table(path)
        columns = {_norm(c): c for c in table.columns if c != LINE}
        if {"imagename", "odx", "ody", "foveax", "foveay"} <= set(columns):
            for row in table.to_dict("records"):
                match = re.fullmatch(r"(.+)_(train|test)", row[columns["imagename"]])
                if match is None:
                    raise line_error(f"image_name {row[columns['imagename']]!r} is not "
                                     f"<name>_train or <name>_test", path, row[LINE])
                key = image_id("B", match.group(2), match.group(1))
                centres.setdefault(key, {}).update(
                    {c: _coordinate(row, columns[_norm(c)], path) for c in
                     ("od_x", "od_y", "fovea_x", "fovea_y")})
        elif {"imageno", "xcoordinate", "ycoordinate"} <= set(columns):
            words = set(re.split(r"[^a-z]+", str(path.relative_to(root)).lower()))
            kind = ("fovea" if "fovea" in words else
                    "od" if "od" in words or {"optic", "disc"} <= words else None)
            split = "train" if "training" in words else "test" if "testing" in words else None
            if kind is None or split is None:
                raise DataError("cannot tell from the file name whether this is an OD or fovea, "
                                "training or testing table", path=path)
            for row in table.to_dict("records"):
                key = image_id("B", split, row[columns["imageno"]])
                centres.setdefault(key, {}).update(
                    {f"{kind}_x": _coordinate(row, columns["xcoordinate"], path),
                     f"{kind}_y": _coordinate(row, columns["ycoordinate"], path)})
        else:
            log.info("ignoring %s: not an IDRiD localisation table", path)
    return centres


def _coordinate(row: dict, column: str, path: Path) -> float:
    try:
        value = float(row[column])
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise line_error(f"{column} is {row[column]!r}; expected a pixel coordinate", path, row[LINE])
    return value


# -- links between images ----------------------------------------------------------------------
def read_matches(path: str | Path) -> list[tuple[str, str, str]]:
    """``(part-A id, part-B id, kind)`` for every matched row of ``seg_to_grading_matches.csv``."""
    path = Path(path)
    table = read_table(path, required=("seg_split", "seg_image", "matched_grading_split",
                                       "matched_grading_image", "match"))
    split_of = {folder: split for split, folder in SPLIT_FOLDERS.items()}
    links = []
    for row in table.to_dict("records"):
        kind = row["match"]
        if kind not in MATCH_KINDS:
            raise line_error(f"match is {kind!r}; expected one of {list(MATCH_KINDS)}", path, row[LINE])
        if kind == "no_match":
            continue
        splits = (split_of.get(row["seg_split"]), split_of.get(row["matched_grading_split"]))
        if None in splits:
            raise line_error(f"split folder not one of {list(split_of)}", path, row[LINE])
        links.append((image_id("A", splits[0], row["seg_image"]),
                      image_id("B", splits[1], row["matched_grading_image"]), kind))
    return links


# -- loaders -----------------------------------------------------------------------------------
def load_idrid(root: str | Path, parts: Sequence[str] = ("A", "B", "C"),
               matches_csv: str | Path | None = None) -> Manifest:
    """IDRiD parts A (lesion masks), B (DR/DME grades) and C (OD/fovea centres) as one manifest.

    Args:
        root: the IDRiD folder (holding ``A. Segmentation``, ``B. Disease Grading``, ``C. ...``).
        parts: which parts to load; ``"C"`` adds columns to the part-B rows, so it needs ``"B"``.
        matches_csv: the part-A/part-B match table; default ``root/seg_to_grading_matches.csv``
            when present (without it, part-A twins are not linked to part B).

    Returns:
        A manifest with paths relative to ``root`` (see the module docstring for the columns).

    Raises:
        ConfigError: unknown part, or part C without part B.
        DataError: a missing folder, an image without labels, a label out of range (naming the CSV
            line), a mask for no image.
    """
    root = Path(root)
    wanted = [str(p).upper() for p in parts]
    unknown = sorted(set(wanted) - {"A", "B", "C"})
    if unknown or not wanted:
        raise ConfigError(f"idrid parts must be some of A, B, C; got {list(parts)}")
    if "C" in wanted and "B" not in wanted:
        raise ConfigError("idrid part C (OD/fovea centres) annotates the part-B images: add 'B'")
    if not root.is_dir():
        raise DataError("IDRiD folder does not exist", path=root)
    records = (_part_a(root) if "A" in wanted else []) + (_part_b(root) if "B" in wanted else [])
    frame = pd.DataFrame.from_records(records)
    frame["eye"] = ""
    if "C" in wanted:
        centres = _part_c(root)
        b_ids = set(frame.loc[frame["part"] == "B", "id"])
        unknown_ids = sorted(set(centres) - b_ids)
        if unknown_ids:
            raise DataError(f"localisation rows for images not in part B (first: {unknown_ids[0]})",
                            path=root)
        for column in ("od_x", "od_y", "fovea_x", "fovea_y"):
            frame[column] = frame["id"].map(lambda i, c=column: centres.get(i, {}).get(c, np.nan))
    matches_path = Path(matches_csv) if matches_csv is not None else root / MATCHES_CSV
    if matches_csv is not None and not matches_path.is_file():
        raise DataError("match table does not exist", path=matches_path)
    matches = read_matches(matches_path) if matches_path.is_file() else []
    add_links(frame, matches)
    manifest = Manifest(arrange(frame), root, name=f"{DATASET} {'+'.join(wanted)}")
    manifest.validate()
    return manifest


def idrid_ssl_gan_set(root: str | Path, matches_csv: str | Path | None = None) -> Manifest:
    """The 249-image set of the patch-based SSL-GAN paper: the 81 part-A lesion images
    (``abnormal=1``, with masks) and the 168 grade-0 part-B images (``abnormal=0``).

    Lecouat B. et al., "Semi-Supervised Deep Learning for Abnormality Classification in Retinal
    Images", ML4H workshop, NeurIPS 2018. Splits are the official IDRiD ones (none of the 168
    grade-0 images is a twin of a part-A image; but B-train IDRiD_118 (grade 0, in this set) is
    byte-identical to B-test IDRiD_064, graded 3, outside it).
    """
    full = load_idrid(root, parts=("A", "B"), matches_csv=matches_csv)
    frame = full.frame
    keep = (frame["part"] == "A") | (pd.to_numeric(frame["dr_grade"], errors="coerce") == 0)
    subset = full.subset(keep.to_numpy())
    subset.name = "idrid ssl-gan 249"
    return subset


def idrid_dr_pool(root: str | Path, exclude: Manifest | None = None, check_images: bool = True,
                  matches_csv: str | Path | None = None) -> Manifest:
    """Part-B images with DR (grade > 0) that show none of the images of ``exclude``: the
    "enlarged unlabelled pool" of the SSL-GAN experiment.

    A part-B DR image is dropped when it is linked to an excluded image (same ``patient`` group:
    part-A twin, byte-identical copy, same eye), when the near-duplicate detector pairs it with an
    excluded image (``check_images``; this also covers ``exclude`` manifests from other folders),
    and when it is a byte-identical copy of an image already in the pool.

    Args:
        root: the IDRiD folder.
        exclude: the labelled set to keep apart (default :func:`idrid_ssl_gan_set`).
        check_images: also run :func:`retinassl.data.duplicates.find_duplicates`.
        matches_csv: see :func:`load_idrid`.
    """
    full = load_idrid(root, parts=("A", "B"), matches_csv=matches_csv)
    if exclude is None:
        exclude = idrid_ssl_gan_set(root, matches_csv=matches_csv)
    frame = full.frame
    excluded_ids = set(exclude.ids)
    excluded_patients = set(frame.loc[frame["id"].isin(excluded_ids), "patient"])
    grade = pd.to_numeric(frame["dr_grade"], errors="coerce")
    candidate = ((frame["part"] == "B") & (grade > 0) & ~frame["patient"].isin(excluded_patients)
                 & ~frame["id"].isin(excluded_ids))
    kept: set[str] = set()
    for i in np.flatnonzero(candidate.to_numpy()):
        copies = set(str(frame.at[i, "duplicate_of"]).split(";")) - {""}
        if copies & kept:
            candidate.iat[i] = False
        else:
            kept.add(frame.at[i, "id"])
    pool = full.subset(candidate.to_numpy())
    if check_images and len(pool):
        from retinassl.data.duplicates import find_duplicates

        pairs = find_duplicates(Manifest.concat([exclude, pool]))
        pool_ids = set(pool.ids)
        hit = {b if a in excluded_ids else a for a, b in zip(pairs["id_a"], pairs["id_b"])
               if (a in excluded_ids) != (b in excluded_ids) and (a in pool_ids or b in pool_ids)}
        if hit:
            log.info("idrid pool: %d more image(s) dropped as near-duplicates of excluded images",
                     len(hit))
        pool = pool.subset((~pool.frame["id"].isin(hit)).to_numpy())
    if len(pool) == 0:
        raise DataError("no part-B DR image is left once the excluded images are removed",
                        path=root)
    pool.name = "idrid dr pool"
    return pool


def is_annotated(row: pd.Series, lesion: str) -> bool:
    """True when ``lesion`` (MA, HE, EX, SE) was annotated on this row, so that an empty
    ``mask_<lesion>`` means an all-zero mask rather than "unknown"."""
    annotated = row.get("lesions_annotated", "")
    return not is_missing(annotated) and lesion in str(annotated).split(",")

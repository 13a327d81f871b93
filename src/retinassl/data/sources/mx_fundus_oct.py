"""Fundus photographs and OCT B-scans of diabetic eyes from Mexico, with DME and DR labels, paired by eye.

The release (Hughes Cano, Olivares Pinto and Thébault; Instituto Mexicano de Oftalmología, UNAM:
github.com/Traslational-Visual-Health-Laboratory/OCT-AND-EYE-FUNDUS-DATASET) names every file
``<patient>_<OD|OI>_<f|o>_<n>`` (patient number, right/left eye, fundus/OCT, sample). This source
reads the tidied tables of the copy in ``../shared/data/mx_fundus_oct`` (its SOURCE.md)::

    fundus.csv, oct.csv   name, image, patient, eye, dme, dr, sha1_original
    fundus/*.jpg          colour fundus photographs
    oct/*.jpg             one macular B-scan per file (no spacing, no localizer: not a volume)

``dme`` is 0/1 (presence of diabetic macular oedema); ``dr`` is ``0``, ``NPDR`` or ``PDR``, with
``-`` (or an empty cell) for "not graded".

Manifest rows (one per image of the chosen ``modality``; ids ``mx-<modality>-<name>``: the release
names two OCT B-scans ``..._f_2``, so the name's ``f``/``o`` does not decide the modality, the table
does):

* ``dme`` (0/1), ``dr_stage`` (0 = no DR, 1 = NPDR, 2 = PDR) and ``dr_any`` (0 = no DR, 1 = NPDR or
  PDR); an ungraded DR cell leaves both DR columns empty, never 0. ``dr_stage`` is not the five-level
  ``dr_grade`` of IDRiD/EyePACS (where 2 is *moderate NPDR*): it has its own column.
* ``patient``: the **linked-patient group**, ``mx-<numbers joined by '+'>``. Some byte-identical
  images appear under two or three patient numbers (e.g. 0346/0348); patients linked by a shared
  ``sha1_original`` -- in either table -- or by :data:`SAME_EYE_FOUND` form one group (union-find
  over patient numbers and hashes), so every split of the toolkit, which groups by ``patient``,
  keeps them on one side. ``patient_number`` is the number as distributed.
* ``eye`` (``R``/``L``; a blank cell is taken from the name, whose ``OD``/``OI`` may be lower case),
  ``sha1_original`` (hash of the original file), ``name``, ``modality``, ``dataset``.
* fundus rows: ``oct_bscan``, the first (by name) OCT B-scan of the same patient number and eye, and
  ``oct_ids``, the ids of all of them (``;``-joined); empty when that eye has no OCT.
  OCT rows: ``fundus_ids``, the ids of the fundus photographs of the same eye.

Options select rows (``require``) and draw a seeded train/val/test split over the groups
(``split``, ``seed``, ``stratify``); without ``split`` the ``split`` column is empty and a command
makes its own patient-level split.

Cite: Hughes Cano J. A., Olivares Pinto U., Thébault S., the OCT and eye fundus dataset of diabetic
patients (Instituto Mexicano de Oftalmología / UNAM), as its release asks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinassl.data.manifest import Manifest
from retinassl.data.sources.generic import _image_path
from retinassl.data.sources.idrid_links import link_groups
from retinassl.data.sources.tables import LINE, line_error, manifest_with_lines, read_table
from retinassl.data.splits import stratified_group_split
from retinassl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATASET = "mx_fundus_oct"
ID_PREFIX = "mx"
MODALITIES: dict[str, str] = {"fundus": "fundus.csv", "oct": "oct.csv"}
CODE_OF_MODALITY: dict[str, str] = {"fundus": "f", "oct": "o"}
COLUMNS: tuple[str, ...] = ("name", "image", "patient", "eye", "dme", "dr", "sha1_original")
DR_STAGES: dict[str, int] = {"0": 0, "NPDR": 1, "PDR": 2}
UNGRADED: tuple[str, ...] = ("", "-")
EYE_OF_CODE: dict[str, str] = {"OD": "R", "OI": "L"}
REQUIRABLE: tuple[str, ...] = ("dme", "dr_stage", "dr_any", "oct_bscan")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
DEFAULT_STRATIFY: tuple[str, ...] = ("dr_stage", "dme")
# Patient numbers whose fundus photographs show the same eye although no original is byte-identical:
# re-encoded copies of one photograph (pHash distance 0-2 of 256 bits) and further photographs of one
# eye (vessel-tree correlation 0.35-0.53). Found by retinassl.data.duplicates.find_duplicates
# (defaults) on the 921 fundus photographs of ../shared/data/mx_fundus_oct, which reported 20 pairs
# across the hash-linked groups; these 11 were confirmed by looking at both images (same lesions,
# same vessel tree). The other 9 (0135/0409/0508/0372/0266/0074 and 0275/0864/0490: pHash distance
# 6-12, correlation < 0.16) are different eyes on dark, blurred photographs. The renumbering is
# systematic in places (0002/0473, 0003/0474, 0005/0478; 0037/0578, 0038/0579).
SAME_EYE_FOUND: tuple[tuple[str, str, str], ...] = (
    ("0002", "0473", "same_image"), ("0003", "0474", "same_image"), ("0005", "0478", "same_image"),
    ("0037", "0578", "same_eye"), ("0038", "0579", "same_eye"), ("0535", "0579", "same_eye"),
    ("0593", "1099", "same_eye"), ("0647", "1182", "same_eye"), ("0648", "1120", "same_eye"),
    ("0968", "1184", "same_eye"), ("1040", "1195", "same_eye"),
)
_NAME = re.compile(r"^(?P<patient>\d+)_(?P<eye>OD|OI)_(?P<modality>[fo])_(?P<sample>\d+)$",
                   re.IGNORECASE)
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class MXRow:
    """One checked row of ``fundus.csv`` or ``oct.csv``.

    Attributes:
        modality: ``fundus`` or ``oct``.
        name: the release's file name stem (``0736_OI_f_1``).
        image: image path relative to the dataset root.
        patient_number: the patient number as distributed (``0736``).
        eye: ``R`` or ``L``.
        dme: 0/1, or None when not graded.
        dr_stage: 0 (no DR), 1 (NPDR), 2 (PDR), or None when not graded.
        sha1: SHA-1 of the original file (equal = byte-identical originals).
        line: the row's line in its CSV (header = line 1).
    """

    modality: str
    name: str
    image: str
    patient_number: str
    eye: str
    dme: int | None
    dr_stage: int | None
    sha1: str
    line: int

    @property
    def id(self) -> str:
        return f"{ID_PREFIX}-{self.modality}-{self.name}"


def _dme(value: str, csv: Path, line: int) -> int | None:
    if value in UNGRADED:
        return None
    if value not in ("0", "1"):
        raise line_error(f"dme is {value!r}; expected 0, 1, or '-' / empty for not graded", csv, line)
    return int(value)


def _dr_stage(value: str, csv: Path, line: int) -> int | None:
    if value in UNGRADED:
        return None
    stage = DR_STAGES.get(value.upper())
    if stage is None:
        raise line_error(f"dr is {value!r}; expected one of {list(DR_STAGES)}, or '-' / empty for "
                         f"not graded", csv, line)
    return stage


def read_mx_table(root: str | Path, modality: str, check_files: bool = True) -> list[MXRow]:
    """The checked rows of one modality's table (``fundus.csv`` or ``oct.csv`` under ``root``).

    Args:
        root: the dataset folder.
        modality: ``fundus`` or ``oct``.
        check_files: check that every image file exists.

    Raises:
        DataError naming the CSV and line: a missing column; a name that is not
            ``<patient>_<OD|OI>_<f|o>_<n>`` (any case); a patient number or eye
            that disagrees with the name; a ``dme``/``dr`` value outside the release's vocabulary;
            a ``sha1_original`` that is not 40 hex digits; an image path that is empty, escapes
            ``root`` or (with ``check_files``) does not exist; a repeated name or image.
    """
    root = Path(root)
    csv = root / MODALITIES[modality]
    table = read_table(csv, required=COLUMNS)
    rows: list[MXRow] = []
    first_line: dict[str, int] = {}
    miscoded: list[str] = []
    for row in table.to_dict("records"):
        line = row[LINE]
        name = row["name"]
        match = _NAME.match(name)
        if match is None:
            raise line_error(f"name {name!r} is not <patient>_<OD|OI>_<f|o>_<n>", csv, line)
        if match["modality"].lower() != CODE_OF_MODALITY[modality]:
            miscoded.append(line)
        if row["patient"] != match["patient"]:
            raise line_error(f"patient is {row['patient']!r} but the name {name!r} says "
                             f"{match['patient']!r}", csv, line)
        eye_of_name = EYE_OF_CODE[match["eye"].upper()]
        eye = row["eye"].upper() or eye_of_name
        if eye != eye_of_name:
            raise line_error(f"eye is {row['eye']!r} but the name {name!r} says {eye_of_name!r}",
                             csv, line)
        sha1 = row["sha1_original"].lower()
        if not _SHA1.match(sha1):
            raise line_error(f"sha1_original is {row['sha1_original']!r}; expected 40 hex digits",
                             csv, line)
        image = _image_path(row["image"], root, csv, line, check_files)
        for what, value, key in (("name", name, name.lower()), ("image", image, image)):
            seen = first_line.setdefault(f"{what}:{key}", line)
            if seen != line:
                raise line_error(f"{what} {value!r} already on line {seen}", csv, line)
        rows.append(MXRow(modality, name, image, match["patient"], eye, _dme(row["dme"], csv, line),
                          _dr_stage(row["dr"], csv, line), sha1, line))
    if not rows:
        raise DataError("the table lists no images", path=csv)
    blank_eye = sum(1 for r in table.to_dict("records") if not r["eye"])
    if blank_eye:
        log.info("%s: eye taken from the name for %d row(s) with an empty eye cell", csv, blank_eye)
    if miscoded:
        log.info("%s: %d name(s) carry the other modality's code (first at line %d); the table decides the "
                 "modality", csv, len(miscoded), miscoded[0])
    return rows


def patient_groups(rows: Sequence[MXRow]) -> dict[str, str]:
    """Patient number -> linked-patient group name, ``mx-<numbers joined by '+'>``.

    Two patient numbers are linked when they share an image hash (``sha1_original``) or are a pair
    of :data:`SAME_EYE_FOUND` (both present), directly or through a chain of such links
    (union-find over patient numbers and hashes).
    """
    links = [(f"p:{r.patient_number}", f"h:{r.sha1}") for r in rows]
    present = {r.patient_number for r in rows}
    links += [(f"p:{a}", f"p:{b}") for a, b, _ in SAME_EYE_FOUND if a in present and b in present]
    root_of = link_groups(links)
    members: dict[str, list[str]] = {}
    for r in rows:
        members.setdefault(root_of[f"p:{r.patient_number}"], []).append(r.patient_number)
    names: dict[str, str] = {}
    for numbers in members.values():
        unique = sorted(set(numbers))
        for number in unique:
            names[number] = f"{ID_PREFIX}-" + "+".join(unique)
    return names


def _warn_conflicting_labels(rows: Sequence[MXRow]) -> None:
    by_hash: dict[str, set[tuple[int | None, int | None]]] = {}
    for r in rows:
        by_hash.setdefault(f"{r.modality}:{r.sha1}", set()).add((r.dme, r.dr_stage))
    conflicting = [h for h, labels in by_hash.items() if len(labels) > 1]
    if conflicting:
        log.warning("mx_fundus_oct: %d group(s) of byte-identical images disagree on dme/dr "
                    "(first: %s)", len(conflicting), conflicting[0])


def _as_list(value: str | Sequence[str] | None, option: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"mx_fundus_oct: option {option!r} is {value!r}; expected a column name or a "
                      f"list of them")


def split_sizes(split: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """The ``split`` option as ``{"train": f, "val": f, "test": f}`` fractions summing to 1.

    Accepts a mapping with keys among train/val/test, or a list of three fractions in that order.

    Raises:
        ConfigError: unknown split names, negative fractions, or fractions not summing to 1.
    """
    if isinstance(split, Mapping):
        unknown = [k for k in split if k not in SPLIT_NAMES]
        if unknown:
            raise ConfigError(f"mx_fundus_oct: option 'split' names {unknown}; allowed: "
                              f"{list(SPLIT_NAMES)}")
        sizes = {k: split[k] for k in SPLIT_NAMES if k in split}
    elif isinstance(split, Sequence) and not isinstance(split, str) and len(split) == 3:
        sizes = dict(zip(SPLIT_NAMES, split))
    else:
        raise ConfigError(f"mx_fundus_oct: option 'split' is {split!r}; expected fractions such as "
                          f"{{train: 0.6, val: 0.2, test: 0.2}} or [0.6, 0.2, 0.2]")
    try:
        sizes = {k: float(v) for k, v in sizes.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"mx_fundus_oct: option 'split' is {split!r}; fractions must be "
                          f"numbers") from None
    if not sizes or any(not 0 <= v <= 1 for v in sizes.values()) or abs(sum(sizes.values()) - 1) > 1e-6:
        raise ConfigError(f"mx_fundus_oct: option 'split' is {split!r}; fractions must lie in "
                          f"[0, 1] and sum to 1")
    return sizes


def _strata(records: Sequence[dict], columns: Sequence[str]) -> np.ndarray:
    """``(N,)`` stratum index per record: the combination of ``columns`` (ungraded = its own value),
    ordered lexicographically (a group is stratified by its members' largest combination)."""
    keys = [tuple(-1 if r[c] is None else int(r[c]) for c in columns) for r in records]
    _, inverse = np.unique(np.array(keys, dtype=np.int64).reshape(len(keys), -1), axis=0,
                           return_inverse=True)
    return inverse.reshape(-1)


def load_mx_fundus_oct(root: str | Path | None = None, modality: str = "fundus",
                       require: str | Sequence[str] | None = None,
                       split: Mapping[str, float] | Sequence[float] | None = None, seed: int = 0,
                       stratify: str | Sequence[str] | None = None,
                       check_files: bool = True) -> Manifest:
    """MX fundus photographs or OCT B-scans of diabetic eyes with DME/DR labels, paired by eye.

    Args:
        root: the dataset folder holding ``fundus.csv``, ``oct.csv``, ``fundus/`` and ``oct/``
            (required; there is no default location).
        modality: ``fundus`` (one row per photograph, with its paired OCT B-scan) or ``oct`` (one
            row per B-scan).
        require: keep only rows where these columns are filled: any of ``dme``, ``dr_stage``,
            ``dr_any`` (the DR-graded rows) and ``oct_bscan`` (fundus photographs with an OCT of
            the same eye).
        split: train/val/test fractions (``{train: 0.6, val: 0.2, test: 0.2}`` or ``[0.6, 0.2,
            0.2]``) of a seeded split of the kept rows that never separates a linked-patient group;
            None leaves the ``split`` column empty.
        seed: the split's random seed.
        stratify: label column(s) the split is stratified by, ungraded as a value of its own
            (default: ``dr_stage`` and ``dme``).
        check_files: check that every image exists.

    Returns:
        A manifest with paths relative to ``root`` (columns in the module docstring).

    Raises:
        ConfigError: no ``root``, an unknown modality, ``require`` or ``stratify`` column, or a bad
            ``split``.
        DataError: a missing folder or table, a malformed row (naming the CSV and line, see
            :func:`read_mx_table`), or no row left after ``require``.
    """
    if root is None:
        raise ConfigError("mx_fundus_oct: the option 'root' is required: the folder holding "
                          "fundus.csv and oct.csv (e.g. -o root=/data/mx_fundus_oct)")
    if modality not in MODALITIES:
        raise ConfigError(f"mx_fundus_oct: option 'modality' is {modality!r}; expected one of "
                          f"{list(MODALITIES)}")
    required = _as_list(require, "require")
    stratify_by = _as_list(stratify, "stratify") or list(DEFAULT_STRATIFY)
    for option, columns, allowed in (("require", required, REQUIRABLE),
                                     ("stratify", stratify_by, REQUIRABLE[:3])):
        unknown = [c for c in columns if c not in allowed]
        if unknown:
            raise ConfigError(f"mx_fundus_oct: option {option!r} names {unknown}; allowed: "
                              f"{list(allowed)}")
    if "oct_bscan" in required and modality != "fundus":
        raise ConfigError("mx_fundus_oct: require 'oct_bscan' applies to modality 'fundus' only")
    sizes = split_sizes(split) if split is not None else None
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder does not exist", path=root)

    tables = {m: read_mx_table(root, m, check_files) for m in MODALITIES}
    group_of = patient_groups(tables["fundus"] + tables["oct"])
    _warn_conflicting_labels(tables[modality])
    other = "oct" if modality == "fundus" else "fundus"
    partners: dict[tuple[str, str], list[MXRow]] = {}
    for r in sorted(tables[other], key=lambda r: r.name):
        partners.setdefault((r.patient_number, r.eye), []).append(r)

    records, lines = [], []
    for r in tables[modality]:
        paired = partners.get((r.patient_number, r.eye), [])
        record = {"id": r.id, "image": r.image, "patient": group_of[r.patient_number],
                  "eye": r.eye, "split": "", "dataset": DATASET, "modality": modality,
                  "name": r.name, "patient_number": r.patient_number, "sha1_original": r.sha1,
                  "dme": r.dme, "dr_stage": r.dr_stage,
                  "dr_any": None if r.dr_stage is None else int(r.dr_stage > 0)}
        if modality == "fundus":
            record["oct_bscan"] = paired[0].image if paired else ""
            record["oct_ids"] = ";".join(p.id for p in paired)
        else:
            record["fundus_ids"] = ";".join(p.id for p in paired)
        if all(record[c] is not None and record[c] != "" for c in required):
            records.append(record)
            lines.append(r.line)
    csv = root / MODALITIES[modality]
    if not records:
        raise DataError(f"no {modality} row has {required} filled", path=csv)
    if sizes is not None:
        names = stratified_group_split(_strata(records, stratify_by),
                                       [r["patient"] for r in records], sizes, seed)
        for record, name in zip(records, names):
            record["split"] = str(name)
    log.info("mx_fundus_oct %s: %d images, %d linked-patient groups%s", modality, len(records),
             len({r["patient"] for r in records}),
             f", {sum(1 for r in records if r.get('oct_bscan'))} with an OCT B-scan of the same eye"
             if modality == "fundus" else "")
    return manifest_with_lines(records, root, f"{DATASET}:{modality}", lines, csv,
                               check_files=check_files)

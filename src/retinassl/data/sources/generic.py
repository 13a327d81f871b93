"""Generic sources for datasets that have no module of their own: class folders and a CSV of paths
and labels (image+mask datasets described by glob patterns: :mod:`retinassl.data.sources.glob_pattern`).

Each returns a validated :class:`~retinassl.data.manifest.Manifest` with paths relative to the
``root`` it was given, and ids ``<prefix>-[<split>-]...`` where ``prefix`` defaults to the name of
the root folder (so that manifests of different datasets can be combined without clashing ids).

Examples (the ``data`` section of a config)::

    source: folder                     # root/<class>/*.png, or root/<split>/<class>/*.png
    options: {root: /data/my_screening}

    source: csv                        # a table of paths and labels
    options: {csv: /data/labels.csv, image_column: path, columns: {abnormal: referable}}
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path

import pandas as pd

from retinassl.errors import ConfigError, DataError
from retinassl.data.manifest import Manifest, label_columns
from retinassl.data.sources.files import list_images, relative, safe_id, stem
from retinassl.data.sources.tables import LINE, line_error, manifest_with_lines, read_table

log = logging.getLogger(__name__)

SPLIT_NAMES: dict[str, str] = {"train": "train", "training": "train", "val": "val", "valid": "val",
                               "validation": "val", "test": "test", "testing": "test", "": ""}
EYE_NAMES: dict[str, str] = {"l": "L", "left": "L", "os": "L", "r": "R", "right": "R", "od": "R",
                             "": ""}


def normalise_split(value: object) -> str | None:
    """``train``/``val``/``test``/``""`` for the usual spellings (training, validation...), else None."""
    return SPLIT_NAMES.get(str(value).strip().lower())


def normalise_eye(value: object) -> str | None:
    """``L``/``R``/``""`` for left/right/OS/OD/L/R (any case), else None."""
    return EYE_NAMES.get(str(value).strip().lower())


# -- (a) class folders -------------------------------------------------------------------------
def _class_folders(folder: Path) -> list[Path]:
    """The class sub-folders of ``folder``; an error for images lying next to them."""
    loose = list_images(folder)
    if loose:
        raise DataError("image lies directly in the folder; expected <class>/<image> (one "
                        "sub-folder per class)", path=loose[0])
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class sub-folders; expected <class>/<image>", path=folder)
    return classes


def _regex_patient(match: re.Match, prefix: str, image: Path) -> tuple[str, str] | None:
    """(patient, eye) from a ``patient_regex`` match, or None when its patient group is empty."""
    if "patient" in match.re.groupindex:
        value = match["patient"]
    else:
        value = match.group(1) if match.re.groups else match.group(0)
    if not value:
        return None
    eye_value = match.groupdict().get("eye") or ""
    eye = normalise_eye(eye_value)
    if eye is None:
        raise DataError(f"patient_regex group 'eye' is {eye_value!r}; expected left/right, L/R or "
                        f"OD/OS", path=image)
    return f"{prefix}-{value}", eye


#: Class-folder names the folder source reads as the negative / the positive class of a pair.
NORMAL_LIKE = frozenset({"normal", "healthy", "negative", "control", "0"})
ABNORMAL_LIKE = frozenset({"abnormal", "disease", "diseased", "positive", "1"})


def load_folder(root: str | Path, prefix: str | None = None,
                positive: str | Collection[str] | None = None,
                patient_regex: str | None = None, link_duplicates: bool = False) -> Manifest:
    """Image folders per class: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``.

    With ``positive``, rows get ``abnormal`` = 1 for the named class folder(s) and 0 for all others.
    Without it, two classes named like normal/abnormal (one of ``normal``, ``healthy``,
    ``negative``, ``control``, ``0`` and one of ``abnormal``, ``disease(d)``, ``positive``, ``1``;
    any case) give the ``abnormal`` label; two classes named otherwise (``dr``/``healthy``,
    ``glaucoma``/``normal``) are refused, since which one is positive would be a guess: say it with
    ``positive: dr``. Three or more classes give ``class_index`` (alphabetical order: 0, 1, ...).
    Every row also records its ``class_name``, so the mapping stays with the manifest. The split
    layout is used when every top-level folder is a split name (train/training,
    val/valid/validation, test/testing).

    Args:
        root: the dataset folder.
        prefix: id and patient prefix (default: the root folder's name).
        positive: the positive class folder name(s), any case (``positive: glaucoma`` for
            ``normal/`` + ``glaucoma/``).
        patient_regex: a regex searched in each file name without its extension; its group
            ``patient`` (else its first group, else the whole match) names the patient
            (``<prefix>-<value>``, the same across class and split folders), so that images of one
            person form one group; an optional group ``eye`` gives the eye (left/right, L/R,
            OD/OS). ODIR-style ``123_left.jpg``: ``^(?P<patient>\\d+)_(?P<eye>left|right)$``. A file
            it does not match is its own patient (a warning counts them). Default: every image is
            its own patient.
        link_duplicates: also make one patient of images that
            :func:`~retinassl.data.duplicates.find_duplicates` finds to be the same photograph or
            the same eye (re-encoded or re-cropped copies under unrelated names; every image is read
            once, fingerprints are cached). Over-grouping a false pair costs only split freedom.

    Raises:
        ConfigError: ``positive`` naming no class folder or every class; two classes not named
            like normal/abnormal without ``positive``; an invalid ``patient_regex``.
        DataError: images lying next to class folders, a folder inside a class folder, an empty
            class folder, split folders mixed with class folders, two images with the same id, an
            ``eye`` group that is not an eye.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder does not exist", path=root)
    prefix = prefix if prefix is not None else root.name
    top = _class_folders(root)
    split_named = [normalise_split(p.name) not in (None, "") for p in top]
    if any(split_named) and not all(split_named):
        raise DataError(f"mixes split folders ({[p.name for p, s in zip(top, split_named) if s]}) "
                        f"with class folders ({[p.name for p, s in zip(top, split_named) if not s]})",
                        path=root)
    layout = ([(normalise_split(p.name), c) for p in top for c in _class_folders(p)]
              if all(split_named) else [("", c) for c in top])
    names = sorted({c.name for _, c in layout})
    lowered = {n.lower() for n in names}
    binary = len(lowered) == 2 and len(lowered & NORMAL_LIKE) == 1 and len(lowered & ABNORMAL_LIKE) == 1
    positives = {str(p).lower() for p in ([positive] if isinstance(positive, str) else positive or [])}
    if positive is not None and (not positives or not positives <= lowered):
        raise ConfigError(f"folder source: positive={positive!r} names no class folder of {root} "
                          f"(the classes are {names})")
    if positives and positives >= lowered:
        raise ConfigError(f"folder source: positive={positive!r} names every class ({names}); no "
                          f"negative class is left")
    if not positives and not binary and len(names) == 2:
        raise ConfigError(f"folder source {root}: two classes {names} not named like normal/abnormal, "
                          f"and no positive class: say which is positive with the option positive "
                          f"(data.options.positive={names[0]}, or -o positive={names[0]} in data inspect)")
    try:
        regex = re.compile(patient_regex) if patient_regex else None
    except re.error as exc:
        raise ConfigError(f"folder source: patient_regex {patient_regex!r} is not a valid regular "
                          f"expression ({exc})") from None
    records, origin, unmatched = [], {}, []
    for split, folder in layout:
        nested = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if nested:
            raise DataError("a folder inside a class folder; expected the images directly in "
                            "<class>/", path=nested[0])
        images = list_images(folder)
        if not images:
            raise DataError("class folder holds no images", path=folder)
        for image in images:
            item = safe_id(prefix, split, folder.name, stem(image.name))
            if item in origin:
                raise DataError(f"two images get the id {item!r} (the other is {origin[item]}); "
                                f"rename one", path=image)
            origin[item] = image
            patient, eye = item, ""
            if regex is not None:
                match = regex.search(stem(image.name))
                found = _regex_patient(match, prefix, image) if match is not None else None
                if found is None:
                    unmatched.append(image.name)
                else:
                    patient, eye = found
            record = {"id": item, "image": relative(image, root), "patient": patient, "eye": eye,
                      "split": split, "class_name": folder.name}
            if positives:
                record["abnormal"] = int(folder.name.lower() in positives)
            elif binary:
                record["abnormal"] = int(folder.name.lower() in ABNORMAL_LIKE)
            else:
                record["class_index"] = names.index(folder.name)
            records.append(record)
    if not binary and not positives:
        log.info("folder source %s: class_index %s", root, dict(enumerate(names)))
    if unmatched:
        log.warning("folder source %s: patient_regex %r does not match %d of %d file names (first: "
                    "%s); each of these is its own patient", root, patient_regex, len(unmatched),
                    len(records), unmatched[0])
    manifest = Manifest.from_records(records, root, name=str(root))
    if link_duplicates:
        _link_duplicate_patients(manifest)
    return manifest


def _link_duplicate_patients(manifest: Manifest) -> None:
    """Merge the patients of images the duplicate detector pairs (in place); the merged group takes
    the patient of its first row."""
    from retinassl.data.duplicates import duplicate_groups, find_duplicates

    frame = manifest.frame
    ids, patients = frame["id"].tolist(), frame["patient"].tolist()
    pairs = find_duplicates(manifest)
    first_of: dict[str, str] = {}
    same_patient = [(first_of.setdefault(p, i), i) for i, p in zip(ids, patients)]
    links = pd.DataFrame(same_patient + list(zip(pairs["id_a"], pairs["id_b"])),
                         columns=["id_a", "id_b"])
    group = duplicate_groups(links, ids)
    patient_of = dict(zip(ids, patients))
    frame["patient"] = [patient_of[group[i]] for i in ids]
    log.info("folder source %s: %d duplicate pair(s) merged %d patients into %d", manifest.root,
             len(pairs), len(set(patients)), frame["patient"].nunique())


# -- (b) a CSV of paths and labels -------------------------------------------------------------
def _image_path(value: str, root: Path, csv: Path, line: int, check_files: bool) -> str:
    if not value:
        raise line_error("image path is empty", csv, line)
    path = Path(value)
    full = Path(os.path.normpath(path if path.is_absolute() else root / path))
    if not Path(os.path.abspath(full)).is_relative_to(Path(os.path.abspath(root))):  # a relative root too
        raise line_error(f"image path {value!r} escapes the dataset root {root}", csv, line)
    if check_files and not full.is_file():
        raise line_error(f"image file does not exist: {full}", csv, line)
    return relative(full, root)


def load_csv(csv: str | Path, root: str | Path | None = None, image_column: str = "image",
             columns: Mapping[str, str] | None = None, prefix: str | None = None,
             check_files: bool = True) -> Manifest:
    """A CSV with one row per image: a path column, optional labels, masks and metadata.

    Args:
        csv: the table (UTF-8 with or without BOM; header names are stripped).
        root: the folder image paths are relative to (default: the CSV's folder). Absolute paths
            are accepted when inside it; paths escaping it are refused.
        image_column: the column with image paths.
        columns: manifest column -> CSV column, e.g. ``{"abnormal": "referable", "patient":
            "subject", "mask_vessels": "vessel_path"}``. CSV columns already named like manifest
            columns (``id``, ``patient``, ``eye``, ``split``, ``dr_grade``, ``mask_OD``...) need no
            entry. Any other CSV column is kept as metadata.
        prefix: id prefix (default: the root folder's name). Without an ``id`` column the id is
            ``<prefix>-<image path without extension>``.
        check_files: check that every image and mask exists.

    Raises:
        DataError naming the CSV line: a missing column, an empty path, a path escaping the root,
            a missing file, an unknown eye or split, a label out of range or not a number
            (``NaN`` written in the cell included; an *empty* cell means "not labelled"), a repeated
            image or id.
    """
    csv = Path(csv)
    root = Path(root) if root is not None else csv.parent
    prefix = prefix if prefix is not None else root.absolute().name
    mapping = {"image": image_column, **dict(columns or {})}
    table = read_table(csv, required=list(dict.fromkeys(mapping.values())))
    targets = set(mapping)
    for column in table.columns:
        if column not in mapping.values() and column != LINE and column not in targets:
            mapping[column] = column
    records, lines = [], []
    first_line: dict[str, int] = {}
    for row in table.to_dict("records"):
        line = row[LINE]
        record = {target: row[source] for target, source in mapping.items()}
        record["image"] = _image_path(record["image"], root, csv, line, check_files)
        for column in ("eye", "split"):
            value = record.get(column, "")
            normal = normalise_eye(value) if column == "eye" else normalise_split(value)
            if normal is None:
                raise line_error(f"{column} {value!r} is not understood", csv, line)
            record[column] = normal
        if not record.get("id"):
            record["id"] = safe_id(prefix, re.sub(r"[/\\]", "-", stem(record["image"])))
        for key in ("image", "id"):
            seen = first_line.setdefault(f"{key}:{record[key]}", line)
            if seen != line:
                raise line_error(f"{key} {record[key]!r} already on line {seen}", csv, line)
        record.setdefault("patient", "")
        if not record["patient"]:
            record["patient"] = record["id"]
        records.append(record)
        lines.append(line)
    if not records:
        raise DataError("the CSV lists no images", path=csv)
    manifest = manifest_with_lines(records, root, str(csv), lines, csv, check_files=check_files)
    for column in label_columns(manifest.frame.columns):
        manifest.frame[column] = pd.to_numeric(manifest.frame[column], errors="coerce")
    return manifest

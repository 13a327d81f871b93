"""Image + mask datasets described by glob patterns (``source: glob``): images found by a glob under
``root``, fields (``stem``, ``folder``...) read from each image path by ``stem_regex``, and each mask
column's file named by a template of those fields, e.g. DRIVE::

    source: glob
    options:
      root: /data/DRIVE
      image: "*/images/*.tif"
      stem_regex: "^(?P<folder>training|test)/images/(?P<stem>\\d+)_"
      split: "{folder}"
      masks: {mask_vessels: "{folder}/1st_manual/{stem}_manual1.gif",
              mask_fov: "{folder}/mask/{stem}_{folder}_mask.gif"}

The other generic sources (class folders, a CSV of paths and labels) are in
:mod:`retinassl.data.sources.generic`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path

from retinassl.data.manifest import MASK_COLUMNS, PAIRED_COLUMNS, Manifest
from retinassl.data.sources.files import is_image, relative, safe_id, stem
from retinassl.data.sources.generic import normalise_eye, normalise_split
from retinassl.errors import ConfigError, DataError


_GLOB_CHARS = re.compile(r"[*?\[]")


def _fields(rel: str, regex: re.Pattern | None, image: Path) -> dict[str, str]:
    if regex is None:
        return {"stem": stem(image.name), "name": image.name}
    match = regex.search(rel)
    if match is None:
        raise DataError(f"path {rel!r} does not match stem_regex {regex.pattern!r}", path=image)
    fields = {k: v for k, v in match.groupdict().items() if v is not None}
    if "stem" not in fields:
        fields["stem"] = match.group(1) if regex.groups else match.group(0)
    fields["name"] = image.name
    return fields


def _format(template: str, fields: Mapping[str, str], what: str) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{what} {template!r} uses a placeholder that is not available "
                          f"({exc}); available: {sorted(fields)}") from None


def _find_mask(root: Path, rel: str, image: Path, column: str, required: bool) -> str:
    if _GLOB_CHARS.search(rel):
        found = sorted(p for p in root.glob(rel) if p.is_file())
        if len(found) > 1:
            raise DataError(f"{column} pattern {rel!r} matches {len(found)} files "
                            f"({found[0].name}, {found[1].name}, ...); make it specific", path=image)
        path = found[0] if found else None
    else:
        path = root / rel if (root / rel).is_file() else None
    if path is not None:
        return relative(path, root)
    if required:
        raise DataError(f"no {column} for this image: {rel!r} does not exist under {root}",
                        path=image)
    return ""


def load_glob(root: str | Path, image: str, masks: Mapping[str, str] | None = None,
              stem_regex: str | None = None, split: str = "", patient: str | None = None,
              eye: str | None = None, optional: Collection[str] = (),
              prefix: str | None = None) -> Manifest:
    """Images matched by a glob pattern, each paired with masks found by file-name templates.

    Every image yields *fields*: ``stem`` (the file name without its extension, or what
    ``stem_regex`` extracts: its group ``stem``, else its first group), ``name`` (the file name),
    and every other named group of ``stem_regex``. The regex is searched in the image path
    relative to ``root`` (with ``/``). Mask templates, ``split``, ``patient`` and ``eye`` are
    ``str.format`` templates over these fields; a mask template may contain glob characters
    (``*``) as long as it matches a single file.

    Args:
        root: the dataset folder.
        image: glob pattern of the images, relative to ``root`` (e.g. ``"images/*.tif"``).
        masks: manifest mask column -> template, e.g. ``{"mask_vessels":
            "manual/{stem}_manual1.gif"}``. Columns must be mask or paired-modality columns.
        stem_regex: regex extracting the stem (and other fields) from the relative image path.
        split: split template (e.g. ``"{folder}"``); training/testing/validation are normalised.
        patient: patient template (default: every image is its own patient).
        eye: eye template (left/right/L/R/OS/OD).
        optional: mask columns that may be missing for some images (empty cell).
        prefix: id prefix (default: the root folder's name).

    Raises:
        ConfigError: an unknown mask column or template placeholder.
        DataError: no image matched, an image the regex does not match, a required mask missing
            or ambiguous, two images with the same id, an unknown split or eye value.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder does not exist", path=root)
    masks = dict(masks or {})
    allowed = MASK_COLUMNS + PAIRED_COLUMNS
    unknown = [c for c in list(masks) + list(optional) if c not in allowed]
    if unknown:
        raise ConfigError(f"unknown mask column(s) {unknown}; allowed: {list(allowed)}")
    prefix = prefix if prefix is not None else root.absolute().name
    try:
        regex = re.compile(stem_regex) if stem_regex else None
    except re.error as exc:
        raise ConfigError(f"glob source: option stem_regex={stem_regex!r} is not a valid regular "
                          f"expression ({exc})") from None
    if not image or Path(image).is_absolute() or ".." in Path(image).parts:
        raise ConfigError(f"glob source: option image={image!r} must be a pattern relative to the "
                          f"dataset folder root={str(root)!r} (no leading '/' and no '..'), e.g. "
                          f"'images/*.png'")
    try:
        images = sorted(p for p in root.glob(image) if is_image(p))
    except (ValueError, NotImplementedError) as exc:
        raise ConfigError(f"glob source: option image={image!r} is not a valid glob pattern "
                          f"({exc})") from None
    if not images:
        raise DataError(f"the pattern {image!r} matches no image file", path=root)
    records, origin = [], {}
    for path in images:
        rel = relative(path, root)
        fields = _fields(rel, regex, path)
        split_value = normalise_split(_format(split, fields, "split"))
        eye_value = normalise_eye(_format(eye, fields, "eye")) if eye else ""
        if split_value is None or eye_value is None:
            raise DataError(f"split {_format(split, fields, 'split')!r} or eye is not understood",
                            path=path)
        item = safe_id(prefix, split_value, fields["stem"])
        if item in origin:
            raise DataError(f"two images get the id {item!r} (the other is {origin[item]}); add a "
                            f"split or a stem_regex that tells them apart", path=path)
        origin[item] = path
        record = {"id": item, "image": rel,
                  "patient": safe_id(prefix, _format(patient, fields, "patient")) if patient
                  else item, "eye": eye_value, "split": split_value}
        for column, template in masks.items():
            record[column] = _find_mask(root, _format(template, fields, column), path, column,
                                        column not in optional)
        records.append(record)
    return Manifest.from_records(records, root, name=str(root))

"""Fundus image + registered thickness map pairs for cross-modal pretraining.

A manifest row pairs an input image (the colour fundus photograph ``image`` or the infrared image
``ir_image``) with a thickness map (``thickness_map``: a ``.npy`` of micrometres, 0 or NaN =
undefined). Registration is a 2x3 affine from map pixel ``(col, row)`` to input-image pixel
``(x, y)``:

- when the row has an OCT volume (``oct_volume``) with a JSON sidecar (the synthetic generator's
  ``oct/<id>.json``), from its ``thickness_map.affine`` (map -> fundus) and ``ir_image.affine``
  (infrared -> fundus);
- otherwise the map is assumed to cover the whole input image (DeepRT's format: the map on the
  infrared field; ``retinassl oct thickness`` writes such maps) -- valid for ``ir_image`` input only.

:class:`ThicknessPairs` warps every map into the preprocessed input's pixel grid (through the
cache's crop/pad/resize :class:`~retinassl.data.field_of_view.Geometry`) once, and yields ``image``,
``target`` (micrometres) and ``mask`` (1 where the target is defined: all four bilinear neighbours
defined, and the map passes the quality check).

Quality (:func:`~retinassl.oct.thickness.map_quality`): a map with NaN pixels, DeepRT's total
variation above 0.014, or less than 20 % defined fails; with ``on_bad_map="mask"`` (default) its
mask is all zero (the loss ignores it; a warning names the file), with ``"error"`` it raises
:class:`~retinassl.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from retinassl.data.cache import PreparedData
from retinassl.data.manifest import Manifest, is_missing
from retinassl.data.field_of_view import Geometry
from retinassl.data.preprocess import normalize
from retinassl.errors import DataError
from retinassl.oct.thickness import map_quality

INPUT_COLUMNS = ("image", "ir_image")


def read_map(path: Path) -> np.ndarray:
    """A thickness map ``.npy`` as float32 ``(H, W)``; DataError naming the file when unreadable
    or not 2-D."""
    try:
        m = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the thickness map ({type(exc).__name__}: {exc})", path=path) from None
    if m.ndim != 2 or m.shape[0] < 4 or m.shape[1] < 4:
        raise DataError(f"a thickness map must be a 2-D array, got shape {m.shape}", path=path)
    return m.astype(np.float32)


def _sidecar(manifest: Manifest, row: int) -> dict[str, Any] | None:
    if "oct_volume" not in manifest.frame.columns:
        return None
    volume = manifest.path(row, "oct_volume")
    if volume is None:
        return None
    side = volume.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc})", path=side) from None


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer o inner`` for 2x3 affines."""
    a = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return a[:2]


def _invert(affine: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]


def field_affine(map_shape: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine of a map covering a whole image: map pixel -> image pixel (pixel centres);
    ``image_size`` is ``(width, height)``."""
    h, w = map_shape
    cx, cy = image_size[0] / w, image_size[1] / h
    return np.array([[cx, 0.0, 0.5 * cx - 0.5], [0.0, cy, 0.5 * cy - 0.5]])


def map_to_image_affine(manifest: Manifest, row: int, input_column: str, map_shape: tuple[int, int],
                        image_size: tuple[int, int], map_frame: str = "sidecar") -> np.ndarray:
    """The 2x3 affine from map pixel ``(col, row)`` to stored input-image pixel ``(x, y)``.

    Args:
        manifest, row: the pair.
        input_column: ``image`` or ``ir_image``.
        map_shape: the map's ``(h, w)``; image_size: the stored input image's ``(width, height)``.
        map_frame: ``sidecar`` (the map of the ``thickness_map`` column, placed by the OCT
            sidecar's ``thickness_map.affine`` when there is one) or ``ir-field`` (a map covering
            the infrared image, as :mod:`retinassl.jobs.oct_thickness` writes).
    """
    meta = _sidecar(manifest, row)
    ir = meta.get("ir_image") if meta is not None else None
    ir_to_fundus = np.asarray(ir["affine"], dtype=np.float64) \
        if isinstance(ir, dict) and ir.get("affine") is not None else None
    to_fundus = None
    if map_frame == "sidecar" and meta is not None and isinstance(meta.get("thickness_map"), dict) \
            and meta["thickness_map"].get("affine") is not None:
        to_fundus = np.asarray(meta["thickness_map"]["affine"], dtype=np.float64)
    if input_column == "ir_image":
        if to_fundus is not None and ir_to_fundus is not None:
            return _compose(_invert(ir_to_fundus), to_fundus)
        return field_affine(map_shape, image_size)
    if to_fundus is None and ir_to_fundus is not None and map_frame == "ir-field":
        ir_size = (int(ir["size"][0]), int(ir["size"][1])) if ir.get("size") else None
        if ir_size is None:
            ir_path = manifest.path(row, "ir_image")
            if ir_path is None:
                raise DataError("the infrared image's size is unknown", row=row)
            from retinassl.data.imageio import image_size as _size

            ir_size = _size(ir_path)
        to_fundus = _compose(ir_to_fundus, field_affine(map_shape, ir_size))
    if to_fundus is None:
        raise DataError("no registration of the thickness map to the fundus photograph (the row has "
                        "no OCT sidecar with thickness_map.affine / ir_image.affine); use the "
                        "infrared image as input", row=row, item=str(manifest.frame.at[row, "id"]))
    return to_fundus


def warp_map(tmap: np.ndarray, map_to_stored: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """A map resampled onto the preprocessed image grid.

    Args:
        tmap: ``(h, w)`` micrometres, 0/NaN undefined.
        map_to_stored: 2x3 map pixel -> stored-image pixel.
        geometry: the cached image's crop/pad/resize.

    Returns:
        ``(target, mask)``: ``(S, S)`` float32 micrometres (0 where undefined) and float32 mask
        (1 where all four bilinear neighbours are defined).
    """
    size = geometry.size
    scale = geometry.scale
    o = np.arange(size, dtype=np.float64)
    xs = (o + 0.5) / scale - 0.5 - geometry.pad_x + geometry.box[0]
    ys = (o + 0.5) / scale - 0.5 - geometry.pad_y + geometry.box[1]
    gx, gy = np.meshgrid(xs, ys)
    inv = _invert(map_to_stored)
    mc = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
    mr = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    defined = (np.isfinite(tmap) & (tmap > 0)).astype(np.float32)
    values = np.where(defined > 0, tmap, 0).astype(np.float32)
    kwargs = dict(interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    target = cv2.remap(values, mc.astype(np.float32), mr.astype(np.float32), **kwargs)
    support = cv2.remap(defined, mc.astype(np.float32), mr.astype(np.float32), **kwargs)
    mask = (support >= 0.999).astype(np.float32)
    return np.where(mask > 0, target / np.maximum(support, 1e-6), 0).astype(np.float32), mask


def input_manifest(manifest: Manifest, input_column: str, target_column: str = "thickness_map") -> Manifest:
    """The rows that have both the input image and a target (``target_column``: the thickness map,
    or ``oct_volume`` when maps are segmented from the volumes), with ``image`` set to the input
    column (masks dropped for the infrared input: they belong to the fundus photograph)."""
    if input_column not in INPUT_COLUMNS:
        raise ValueError(f"input must be one of {INPUT_COLUMNS}, got {input_column!r}")
    frame = manifest.frame
    needs = "thickness maps" if target_column == "thickness_map" else "OCT volumes"
    for column in (input_column, target_column):
        if column not in frame.columns:
            raise DataError(f"the manifest has no {column!r} column (cross-modal pretraining needs "
                            f"paired images and {needs})", path=manifest.name)
    keep = np.array([not is_missing(frame.at[r, input_column]) and
                     not is_missing(frame.at[r, target_column]) for r in range(len(frame))])
    sub = manifest.subset(np.flatnonzero(keep))
    sub.frame = sub.frame.reset_index(drop=True)
    if input_column == "ir_image":
        sub.frame["image"] = sub.frame["ir_image"]
        sub.frame = sub.frame.drop(columns=[c for c in sub.frame.columns if c.startswith("mask_")])
    return sub


class ThicknessPairs(Dataset):
    """Preprocessed input images with their registered thickness targets.

    Args:
        prepared: the input images in the cache (from :func:`input_manifest`'s manifest; for
            ``ir_image`` its ``image`` column is the infrared image).
        input_column: ``image`` (colour fundus) or ``ir_image`` (infrared).
        on_bad_map: ``mask`` or ``error`` (see the module docstring).
        tv_threshold: DeepRT's total-variation threshold.
        maps: thickness maps to use instead of the ``thickness_map`` files, one per row, covering
            the infrared field (e.g. computed by :mod:`retinassl.jobs.oct_thickness` from the OCT
            volumes).

    Items: ``image`` ``(C, S, S)``, ``target`` ``(1, S, S)`` micrometres, ``mask`` ``(1, S, S)``,
    ``index``. Attributes ``quality`` (per row: tv, defined fraction, passes) and ``failed`` (rows
    whose map failed).
    """

    def __init__(self, prepared: PreparedData, input_column: str = "image",
                 on_bad_map: Literal["mask", "error"] = "mask", tv_threshold: float = 0.014,
                 maps: Sequence[np.ndarray] | None = None) -> None:
        self.prepared = prepared
        self.normalize = prepared.config.normalization()
        manifest = prepared.manifest
        size = prepared.config.size
        self.targets = np.zeros((len(prepared), size, size), dtype=np.float32)
        self.masks = np.zeros((len(prepared), size, size), dtype=np.uint8)
        self.quality: list[dict[str, Any]] = []
        self.failed: list[int] = []
        log = logging.getLogger(__name__)
        column = "ir_image" if input_column == "ir_image" else "image"
        for r in range(len(prepared)):
            path = manifest.path(r, "thickness_map") if maps is None else manifest.path(r, "oct_volume")
            tmap = read_map(path) if maps is None else np.asarray(maps[r], dtype=np.float32)
            q = map_quality(tmap, tv_threshold)
            self.quality.append(q)
            if not q["passes"]:
                if on_bad_map == "error":
                    raise DataError(f"the thickness map fails the quality check: "
                                    f"{'; '.join(q['reasons'])}", path=path)
                log.warning("%s: thickness map excluded from the loss (%s)", path,
                            "; ".join(q["reasons"]))
                self.failed.append(r)
                continue
            geometry = prepared.entries[r].geometry
            affine = map_to_image_affine(manifest, r, column, tmap.shape, geometry.original_size,
                                         "sidecar" if maps is None else "ir-field")
            target, mask = warp_map(tmap, affine, geometry)
            self.targets[r] = target
            self.masks[r] = mask.astype(np.uint8)

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.prepared.entries[index]
        image = normalize(np.asarray(entry.image()), self.normalize, entry.stats)
        return {"image": torch.from_numpy(image),
                "target": torch.from_numpy(self.targets[index])[None],
                "mask": torch.from_numpy(self.masks[index].astype(np.float32))[None],
                "index": index}

"""A plain B-scan stack (``.npy`` or multi-page ``.tif``) with a JSON spacing sidecar.

The sidecar is the volume's path with the suffix ``.json`` (``scan.npy`` -> ``scan.json``), or
given explicitly. Keys (only ``spacing_mm`` is required)::

    spacing_mm       [between B-scans, axial, lateral] in mm
    eye              "R" / "L" (also accepted: "laterality", OD/OS)
    acquisition_date "YYYY-MM-DD"
    bscan_start, bscan_end   [[x, y], ...] one per B-scan: first / last A-scan position, in the
                     coordinates of the localizer image, or of whatever frame the localizer's
                     ``affine`` maps its pixels to (then converted to localizer pixels)
    ir_image         localizer image file (relative to the sidecar), or
                     {"file": ..., "spacing_mm": [row, col], "affine": [[a, b, c], [d, e, f]]}
                     where ``affine`` maps localizer pixel (col, row, 1) to the position frame
    fundus_pixel_mm  mm per unit of the position frame (gives the localizer spacing from the affine)
    boundaries       .npy file of (K, n_bscans, width) boundary rows, with "boundary_names" (K names)
    labels           or: .npy file of (n_bscans, depth, width) region masks (0 above the first
                     boundary ... K below the last, negative = unannotated), with "boundary_names"
    polylines        or: {name: [per B-scan: list of polylines, each [[x, y], ...]]} annotations
                     as drawn in a tool (A-scan, row); linear between points, NaN elsewhere
    fovea            [x, y] in the position frame
    patient_id       read only to be hashed into the patient key

The synthetic generator's sidecars (``oct/<id>.json``, :mod:`retinassl.data.synthetic`) follow this
schema, so a synthetic volume reads like any other stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from retinassl.errors import DataError
from retinassl.oct.identity import patient_key
from retinassl.oct.layers import labels_to_boundaries, polylines_to_rows
from retinassl.oct.volume import OCTVolume, iso_date, laterality_code


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError("file does not exist", path=path)
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        import tifffile

        return tifffile.imread(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the B-scan stack ({type(exc).__name__}: {exc})", path=path) from None


def _read_localizer(path: Path) -> np.ndarray:
    from retinassl.data.imageio import read_image

    return np.asarray(read_image(path, grayscale=True).array)


def _sidecar(path: Path, sidecar: Path | None) -> tuple[Path, dict[str, Any]]:
    side = sidecar or path.with_suffix(".json")
    if not side.is_file():
        raise DataError(f"no spacing sidecar: expected {side.name} beside the stack (a JSON file with "
                        f"spacing_mm = [between B-scans, axial, lateral] in mm)", path=path)
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"invalid JSON ({exc})", path=side) from None
    if not isinstance(meta, dict):
        raise DataError("the sidecar must be a JSON object", path=side)
    return side, meta


def read_stack_volume(path: str | Path, sidecar: str | Path | None = None) -> OCTVolume:
    """Read a ``.npy``/``.tif`` B-scan stack ``(n_bscans, depth, width)`` and its JSON sidecar.

    Raises:
        DataError: missing sidecar or spacing, wrong array shape, inconsistent positions or
            boundaries (naming the file).
    """
    path = Path(path)
    side, meta = _sidecar(path, Path(sidecar) if sidecar else None)
    if "spacing_mm" not in meta:
        raise DataError("the sidecar has no spacing_mm ([between B-scans, axial, lateral] in mm)",
                        path=side)
    bscans = _read_array(path)
    if bscans.ndim == 2:
        bscans = bscans[None]
    if bscans.ndim != 3:
        raise DataError(f"expected a (n_bscans, depth, width) stack, got shape {bscans.shape}", path=path)
    declared = meta.get("shape")
    if declared is not None and list(declared) != list(bscans.shape):
        raise DataError(f"the sidecar declares shape {list(declared)} but the stack has "
                        f"{list(bscans.shape)} (B-scan count or size disagrees)", path=path)
    warnings: list[str] = []
    localizer, loc_spacing, affine = None, None, None
    ir = meta.get("ir_image")
    if ir is not None:
        entry = ir if isinstance(ir, dict) else {"file": ir}
        localizer = _read_localizer(side.parent / entry["file"])
        if entry.get("affine") is not None:
            affine = np.asarray(entry["affine"], dtype=np.float64)
            if affine.shape != (2, 3):
                raise DataError("ir_image.affine must be a 2x3 matrix", path=side)
        if entry.get("spacing_mm") is not None:
            loc_spacing = tuple(float(v) for v in entry["spacing_mm"])
        elif affine is not None and meta.get("fundus_pixel_mm"):
            unit = float(meta["fundus_pixel_mm"])
            loc_spacing = (float(np.hypot(affine[1, 0], affine[1, 1])) * unit,
                           float(np.hypot(affine[0, 0], affine[0, 1])) * unit)

    def to_localizer(points: Any) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if affine is None:
            return pts
        inv = np.linalg.inv(affine[:, :2])
        return (pts - affine[:, 2]) @ inv.T

    start = end = None
    if meta.get("bscan_start") is not None and meta.get("bscan_end") is not None:
        start = to_localizer(meta["bscan_start"])
        end = to_localizer(meta["bscan_end"])
    fovea = None
    if meta.get("fovea") is not None:
        fx, fy = to_localizer(meta["fovea"])[0]
        fovea = (float(fx), float(fy))
    layers: dict[str, np.ndarray] = {}
    n, depth, width = bscans.shape
    if meta.get("labels"):
        masks = _read_array(side.parent / meta["labels"])
        names = meta.get("boundary_names")
        if masks.shape != bscans.shape or not names:
            raise DataError(f"labels must have the stack's shape {bscans.shape} and come with "
                            f"boundary_names, got {masks.shape}", path=side.parent / meta["labels"])
        rows = np.stack([labels_to_boundaries(masks[i], len(names)) for i in range(n)], axis=1)
        layers = {str(name): rows[k] for k, name in enumerate(names)}
    if meta.get("polylines"):
        for name, per_bscan in meta["polylines"].items():
            if len(per_bscan) != n:
                raise DataError(f"polylines of {name!r} must list {n} B-scans, got {len(per_bscan)}",
                                path=side)
            layers[str(name)] = np.stack([polylines_to_rows(lines, width) for lines in per_bscan])
    if meta.get("boundaries"):
        rows = _read_array(side.parent / meta["boundaries"])
        names = meta.get("boundary_names") or [f"B{k}" for k in range(rows.shape[0])]
        if rows.ndim != 3 or rows.shape[0] != len(names):
            raise DataError(f"boundaries must be ({len(names)}, n_bscans, width), got {rows.shape}",
                            path=side.parent / meta["boundaries"])
        layers = {str(name): rows[k] for k, name in enumerate(names)}
    volume = OCTVolume(
        bscans=bscans, spacing_mm=tuple(meta["spacing_mm"]), bscan_start=start, bscan_end=end,
        localizer=localizer, localizer_spacing_mm=loc_spacing,
        laterality=laterality_code(meta.get("eye", meta.get("laterality"))),
        acquisition_date=iso_date(meta.get("acquisition_date")),
        patient_key=patient_key(meta.get("patient_id")) if meta.get("patient_id") else "",
        layers=layers, fovea=fovea, format="stack", warnings=warnings, source=str(path))
    return volume.validate()

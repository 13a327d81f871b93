"""Volume -> boundaries -> thickness map + ETDRS table + quality, and the files
``retinassl oct thickness`` writes.

Boundaries come from a layer-segmentation model when one is given, otherwise from the export's own
layer annotations (ILM and BM); without either there is no thickness (a clear error). Outputs
(no patient identifier, no input file name, anywhere):

``thickness_map.npy``
    float32 ``(S, S)`` micrometres on the localizer field (DeepRT format: 0 = undefined).
``thickness_map.png``
    the map over the infrared image with a colour bar, the fovea and the ETDRS circles.
``etdrs.csv``
    the 9 ETDRS sectors: mean thickness (micrometres), volume (mm^3), valid fraction, pixels.
``thickness_ascans.npy``, ``boundaries.npy``
    per-A-scan thickness ``(n_bscans, width)`` (NaN = undefined) and the boundary rows
    ``(K, n_bscans, width)`` that gave it.
``thickness.json``
    volume metadata (:meth:`OCTVolume.describe`: format, shape, spacing, laterality, date, hashed
    patient key), grid geometry, fovea and how it was found, quality (DeepRT total variation,
    defined fraction, pass/fail), the boundary source, warnings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import write_text, write_with
from retinassl.errors import DataError
from retinassl.figures.oct import etdrs_radii, thickness_png
from retinassl.oct.layers import missing_boundaries
from retinassl.methods.oct_layers import LayerModel
from retinassl.oct.thickness import (MapGrid, ascan_thickness, etdrs_table, find_fovea, map_grid, map_quality,
                        scan_positions, thickness_map)
from retinassl.oct.volume import OCTVolume

log = logging.getLogger(__name__)
THICKNESS_BOUNDARIES: tuple[str, str] = ("ILM", "BM")


@dataclass
class ThicknessResult:
    """Everything :func:`compute_thickness` derives from one volume."""

    boundaries: dict[str, np.ndarray]
    thickness: np.ndarray
    tmap: np.ndarray
    grid: MapGrid
    fovea: tuple[float, float] | None
    fovea_source: str
    etdrs: pd.DataFrame | None
    quality: dict[str, Any]
    boundary_source: str
    warnings: list[str] = field(default_factory=list)


def volume_boundaries(volume: OCTVolume, model: LayerModel | None) -> tuple[dict[str, np.ndarray], str]:
    """ILM and BM rows from ``model`` or from the volume's annotations; DataError naming the file
    when neither gives both."""
    if model is not None:
        missing = [n for n in THICKNESS_BOUNDARIES if n not in model.boundaries]
        if missing:
            raise DataError(f"the layer model segments {list(model.boundaries)}, not {missing}; "
                            f"thickness needs ILM and BM")
        return model.segment(volume), "model"
    if not volume.layers:
        raise DataError("the volume has no layer segmentation; pass a layer-segmentation model "
                        "(--model, trained with `retinassl oct train-seg`)", path=volume.source or None)
    missing = missing_boundaries(volume.layers, THICKNESS_BOUNDARIES)
    if missing:
        raise DataError(f"the segmentation lacks the boundaries {missing} (has "
                        f"{sorted(volume.layers)}); thickness needs ILM and BM",
                        path=volume.source or None)
    return {n: volume.layers[n] for n in THICKNESS_BOUNDARIES}, "annotations"


def _inside_scan(tmap: np.ndarray, grid: MapGrid, point: tuple[float, float]) -> bool:
    col, row = grid.from_localizer(*point)
    c, r = int(round(col)), int(round(row))
    return 0 <= r < tmap.shape[0] and 0 <= c < tmap.shape[1] and bool(np.isfinite(tmap[r, c]))


def etdrs_grid(grid: MapGrid, centre: tuple[float, float], pixel_mm: float = 0.02) -> MapGrid | None:
    """A fine grid (``pixel_mm``) covering the 6 mm ETDRS circle around ``centre`` (localizer
    coordinates), or None when the localizer scale is unknown."""
    if grid.mm_per_pixel is None:
        return None
    unit_x = grid.mm_per_pixel[0] / grid.affine[0, 0]        # mm per localizer unit
    unit_y = grid.mm_per_pixel[1] / grid.affine[1, 1]
    size = int(np.ceil(6.0 / pixel_mm)) + 3
    cx, cy = pixel_mm / unit_x, pixel_mm / unit_y
    affine = np.array([[cx, 0.0, centre[0] + (0.5 - size / 2) * cx],
                       [0.0, cy, centre[1] + (0.5 - size / 2) * cy]])
    return MapGrid(size, affine, (pixel_mm, pixel_mm), grid.registered)


def compute_thickness(volume: OCTVolume, model: LayerModel | None = None,
                      map_size: int = 128) -> ThicknessResult:
    """Boundaries, per-A-scan thickness, the map, the fovea, ETDRS and quality of one volume."""
    boundaries, source = volume_boundaries(volume, model)
    thickness = ascan_thickness(boundaries["ILM"], boundaries["BM"], volume.spacing_mm[1])
    start, end, _, _ = scan_positions(volume)
    grid, warnings = map_grid(volume, map_size)
    warnings = list(volume.warnings) + warnings
    tmap = thickness_map(thickness, start, end, grid, path=volume.source or None)
    if not np.isfinite(tmap).any():
        warnings.append("no A-scan has a defined thickness: the map is empty")
    fovea: tuple[float, float] | None = None
    fovea_source = "none"
    if volume.fovea is not None:
        if _inside_scan(tmap, grid, volume.fovea):
            fovea, fovea_source = volume.fovea, "metadata"
        else:
            warnings.append("the fovea position in the metadata lies outside the scanned area; "
                            "using the thickness minimum instead")
    if fovea is None:
        fovea = find_fovea(tmap, grid)
        fovea_source = "thickness-minimum"
    if fovea is None:
        centre = (start[0] + start[-1] + end[0] + end[-1]) / 4
        fovea, fovea_source = (float(centre[0]), float(centre[1])), "scan-centre"
        warnings.append("no fovea found (empty map): the ETDRS grid is centred on the scan")
    etdrs = None
    fine = etdrs_grid(grid, fovea)
    if fine is None:
        warnings.append("the localizer scale is unknown: no ETDRS table")
    elif not np.isfinite(thickness).any() or not np.isfinite(tmap).any():
        # no sector has a measured value: a table would only list made-up or empty numbers
        warnings.append("no ETDRS table: no A-scan has a defined thickness")
    else:
        fine_map = thickness_map(thickness, start, end, fine, path=volume.source or None)
        etdrs = etdrs_table(fine_map, fine.mm_per_pixel, ((fine.size - 1) / 2, (fine.size - 1) / 2),
                            volume.laterality)
        if not volume.laterality:
            warnings.append("laterality unknown: ETDRS nasal/temporal sectors assume a right eye")
    quality = map_quality(np.nan_to_num(tmap, nan=0.0))
    quality["registered"] = grid.registered
    quality["fraction_ascans_defined"] = float(np.isfinite(thickness).mean())
    for w in warnings:
        log.warning("%s", w)
    return ThicknessResult(boundaries, thickness, tmap, grid, fovea, fovea_source, etdrs, quality,
                           source, warnings)


def _npy(array: np.ndarray):
    return lambda fh: np.save(fh, array, allow_pickle=False)


def write_thickness(result: ThicknessResult, volume: OCTVolume, out_dir: str | Path,
                    extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the outputs listed in the module docstring into ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in (("map", "thickness_map.npy"), ("png", "thickness_map.png"),
                                      ("etdrs", "etdrs.csv"), ("ascans", "thickness_ascans.npy"),
                                      ("boundaries", "boundaries.npy"), ("meta", "thickness.json"))}
    deeprt = np.nan_to_num(result.tmap, nan=0.0).astype(np.float32)
    write_with(paths["map"], _npy(deeprt))
    write_with(paths["ascans"], _npy(result.thickness.astype(np.float32)))
    names = list(result.boundaries)
    write_with(paths["boundaries"], _npy(np.stack([result.boundaries[n] for n in names]).astype(np.float32)))
    g = result.grid
    size = g.size
    left, top = g.to_localizer(np.array(-0.5), np.array(-0.5))
    right, bottom = g.to_localizer(np.array(size - 0.5), np.array(size - 0.5))
    radii = etdrs_radii(g.mm_per_pixel[0] / g.affine[0, 0]) if g.mm_per_pixel else None
    show = volume.localizer if g.registered else None
    thickness_png(result.tmap, paths["png"], localizer=show,
                  extent=(float(left), float(right), float(bottom), float(top)),
                  fovea=result.fovea, etdrs_radii_px=radii,
                  title=f"retinal thickness (ILM-BM), {volume.laterality or '?'} eye")
    if result.etdrs is not None:
        write_text(paths["etdrs"], result.etdrs.to_csv(index=False, float_format="%.4f"))
    else:
        paths.pop("etdrs")
    meta = {"volume": volume.describe(), "boundary_source": result.boundary_source,
            "boundary_names": names, "map": {"file": paths["map"].name, "size": size,
                                             "units": "micrometres", "undefined_value": 0.0,
                                             "affine_map_to_localizer": g.affine.tolist(),
                                             "mm_per_pixel": g.mm_per_pixel,
                                             "registered_to_localizer": g.registered},
            "fovea": result.fovea, "fovea_source": result.fovea_source,
            "quality": result.quality, "warnings": result.warnings, **(extra or {})}
    write_text(paths["meta"], json.dumps(meta, indent=1, default=_json_default))
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

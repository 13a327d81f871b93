"""Retinal thickness: per A-scan from boundaries, gridded onto the fundus image, the ETDRS grid, the
fovea, and DeepRT's total-variation quality score.

Thickness is measured along the A-scan, ``(BM - ILM) * axial spacing``, in micrometres, as the
device software and DeepRT do. The thickness map is a ``size x size`` grid in localizer (infrared)
pixel coordinates: by default it covers the whole localizer, so that it is registered to the
infrared image and has the format of DeepRT's example maps (128 x 128 micrometres over the 30-degree
infrared field, the 20-degree scan filling the central two thirds, 0 outside). Each map pixel centre
is located between two B-scans and along them (parallel B-scans with any spacing), and the
per-A-scan thickness is interpolated bilinearly there; NaN (undefined) outside the scanned area and
where the thickness is unknown.

Total variation (DeepRT ``thickness_map_calculation/quality_filter/log_tv.py``): on the map as
stored (0 = undefined), the mean absolute difference between consecutive pixels of the central crop
``[30:98, 30:98]`` flattened row by row (so the differences between one row's end and the next row's
start count too), divided by ``max - min`` of the whole map, averaged with the same on the
transposed crop. DeepRT kept maps with ``tv <= 0.014`` (:data:`TV_THRESHOLD`). For other map sizes
the crop margin scales with the size (``30 / 128``). This reproduces the values in DeepRT's
``tv_pd.csv`` for both example maps exactly (``0.008815689089889202`` and ``0.008996764621720247``;
tested in ``tests/oct/test_thickness.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from retinassl.errors import DataError
from retinassl.oct.volume import OCTVolume

TV_THRESHOLD = 0.014
ETDRS_SECTORS: tuple[str, ...] = ("C0", "S1", "N1", "I1", "T1", "S2", "N2", "I2", "T2")
ETDRS_DIAMETERS_MM: tuple[float, float, float] = (1.0, 3.0, 6.0)


def ascan_thickness(top: np.ndarray, bottom: np.ndarray, axial_mm: float) -> np.ndarray:
    """Thickness in micrometres between two boundaries ``(..., W)`` (rows), along the A-scan.

    NaN where either boundary is missing or the bottom lies above the top.
    """
    t = (np.asarray(bottom, dtype=np.float64) - np.asarray(top, dtype=np.float64)) * axial_mm * 1000.0
    return np.where(t >= 0, t, np.nan).astype(np.float32)


@dataclass(frozen=True)
class MapGrid:
    """A square grid in localizer coordinates.

    Attributes:
        size: pixels per side.
        affine: ``(2, 3)`` map pixel ``(col, row, 1)`` -> localizer ``(x, y)``.
        mm_per_pixel: ``(x, y)`` millimetres per map pixel, or None when the localizer scale is
            unknown.
        registered: True when the grid is the localizer's own field (the map overlays the
            infrared image); False for a grid placed around the scan because there is no usable
            localizer.
    """

    size: int
    affine: np.ndarray
    mm_per_pixel: tuple[float, float] | None
    registered: bool

    def to_localizer(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = self.affine
        return (a[0, 0] * cols + a[0, 1] * rows + a[0, 2], a[1, 0] * cols + a[1, 1] * rows + a[1, 2])

    def from_localizer(self, x: float, y: float) -> tuple[float, float]:
        inv = np.linalg.inv(self.affine[:, :2])
        col, row = inv @ (np.array([x, y]) - self.affine[:, 2])
        return float(col), float(row)


def scan_positions(volume: OCTVolume) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None, bool]:
    """B-scan start/end positions and the mm per position unit ``(x, y)``.

    Without positions, a regular raster is assumed (B-scan ``i`` at ``y = i * between / lateral``,
    A-scans at ``x = 0 .. width - 1``, unit = one lateral A-scan spacing) and ``known`` is False.

    Returns:
        ``(start, end, mm_per_unit, known)``.
    """
    n, _, w = volume.shape
    if volume.has_positions:
        mm = None if volume.localizer_spacing_mm is None else \
            (volume.localizer_spacing_mm[1], volume.localizer_spacing_mm[0])
        return volume.bscan_start, volume.bscan_end, mm, True  # type: ignore[return-value]
    between, _, lateral = volume.spacing_mm
    ys = np.arange(n, dtype=np.float64) * between / lateral
    start = np.stack([np.zeros(n), ys], axis=1)
    end = np.stack([np.full(n, w - 1.0), ys], axis=1)
    return start, end, (lateral, lateral), False


def map_grid(volume: OCTVolume, size: int = 128) -> tuple[MapGrid, list[str]]:
    """The thickness-map grid of a volume and warnings about it.

    The localizer's field when the scan lies on it (DeepRT's format); otherwise a grid centred on the
    scan, 1.5 times its larger extent (so the scan fills the central two thirds), not registered.
    """
    start, end, mm, known = scan_positions(volume)
    pts = np.concatenate([start, end])
    warnings: list[str] = []
    loc = volume.localizer
    if known and loc is not None:
        h, w = loc.shape[:2]
        margin = 0.02 * max(h, w)
        inside = (pts[:, 0] >= -0.5 - margin).all() and (pts[:, 0] <= w - 0.5 + margin).all() and \
            (pts[:, 1] >= -0.5 - margin).all() and (pts[:, 1] <= h - 0.5 + margin).all()
        if inside:
            cx, cy = w / size, h / size
            affine = np.array([[cx, 0.0, 0.5 * cx - 0.5], [0.0, cy, 0.5 * cy - 0.5]])
            px = None if mm is None else (mm[0] * cx, mm[1] * cy)
            return MapGrid(size, affine, px, True), warnings
        warnings.append("the B-scan positions lie outside the infrared image: the thickness map is "
                        "centred on the scan and not registered to the infrared image")
    elif not known:
        warnings.append("B-scan positions unknown: a regular raster is assumed and the map is not "
                        "registered to any fundus image")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = (lo + hi) / 2
    unit = np.array(mm if mm is not None else (1.0, 1.0))
    extent_mm = (hi - lo) * unit
    side_mm = 1.5 * max(float(extent_mm.max()), 1e-6)
    cell = side_mm / size / unit                       # position units per map pixel, (x, y)
    affine = np.array([[cell[0], 0.0, centre[0] + (0.5 - size / 2) * cell[0]],
                       [0.0, cell[1], centre[1] + (0.5 - size / 2) * cell[1]]])
    px = None if mm is None else (side_mm / size, side_mm / size)
    return MapGrid(size, affine, px, False), warnings


def _line_geometry(start: np.ndarray, end: np.ndarray, path: object) -> tuple[np.ndarray, np.ndarray,
                                                                              np.ndarray, np.ndarray]:
    """Unit direction ``u`` and normal ``v`` of the scan lines, the lines' normal offsets, and the
    order of B-scans sorted by offset."""
    d = end - start
    lengths = np.hypot(d[:, 0], d[:, 1])
    if (lengths <= 0).any():
        raise DataError("a B-scan has identical start and end positions", path=path)
    u_i = d / lengths[:, None]
    u = u_i[0]
    if (u_i @ u < math.cos(math.radians(2.0))).any():
        raise DataError("the B-scans are not parallel (radial or circle scans are not supported)",
                        path=path)
    v = np.array([-u[1], u[0]])
    offsets = (start - start[0]) @ v
    order = np.argsort(offsets, kind="stable")
    if len(order) > 1 and (np.diff(offsets[order]) <= 1e-9).any():
        raise DataError("two B-scans have the same position", path=path)
    return u_i, v, offsets, order


def thickness_map(thickness: np.ndarray, start: np.ndarray, end: np.ndarray, grid: MapGrid,
                  path: object = None) -> np.ndarray:
    """Grid per-A-scan thickness onto ``grid``.

    Args:
        thickness: ``(n_bscans, width)`` micrometres, NaN where unknown.
        start, end: ``(n_bscans, 2)`` positions of the first/last A-scan (parallel B-scans).
        grid: the target grid (:func:`map_grid`).
        path: the source file, for error messages.

    Returns:
        ``(size, size)`` float32 micrometres; NaN outside the scan and where the bilinear
        neighbours carry less than half the weight in known values.
    """
    th = np.array(thickness, dtype=np.float64)
    n, w = th.shape
    start = np.array(start, dtype=np.float64)
    end = np.array(end, dtype=np.float64)
    # a B-scan scanned in the opposite direction (bidirectional rasters) is turned around
    d = end - start
    back = (d @ d[0]) < 0
    start[back], end[back] = end[back].copy(), start[back].copy()
    th[back] = th[back, ::-1]
    u_i, v, offsets, order = _line_geometry(start, end, path)
    th, start, end, u_i, offsets = th[order], start[order], end[order], u_i[order], offsets[order]
    lengths = np.hypot(*(end - start).T)
    cols, rows = np.meshgrid(np.arange(grid.size, dtype=np.float64),
                             np.arange(grid.size, dtype=np.float64))
    x, y = grid.to_localizer(cols.ravel(), rows.ravel())
    o = (x - start[0, 0]) * v[0] + (y - start[0, 1]) * v[1]
    eps = 1e-6 * max(1.0, float(np.abs(offsets).max()))
    if n == 1:
        half = 0.5 * float(np.hypot(*grid.affine[:, 0]))
        inside = np.abs(o) <= half
        fi = np.zeros_like(o)
    else:
        inside = (o >= offsets[0] - eps) & (o <= offsets[-1] + eps)
        fi = np.interp(o, offsets, np.arange(n, dtype=np.float64))
    i0 = np.clip(np.floor(fi).astype(int), 0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    ti = fi - i0

    def along(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Value and finiteness weight of B-scan ``i`` at each point's position along it."""
        s = ((x - start[i, 0]) * u_i[i, 0] + (y - start[i, 1]) * u_i[i, 1]) / lengths[i] * (w - 1)
        ok = (s >= -1e-6) & (s <= w - 1 + 1e-6)
        s = np.clip(s, 0, w - 1)
        j0 = np.floor(s).astype(int)
        j1 = np.minimum(j0 + 1, w - 1)
        tj = s - j0
        a, b = th[i, j0], th[i, j1]
        wa, wb = (1 - tj) * np.isfinite(a), tj * np.isfinite(b)
        total = np.nan_to_num(a) * wa + np.nan_to_num(b) * wb
        weight = wa + wb
        return np.where(ok, total, 0.0), np.where(ok, weight, 0.0)

    v0, w0 = along(i0)
    v1, w1 = along(i1)
    total = v0 * (1 - ti) + v1 * ti
    weight = w0 * (1 - ti) + w1 * ti
    out = np.where(inside & (weight >= 0.5 - 1e-9), total / np.maximum(weight, 1e-12), np.nan)
    return out.reshape(grid.size, grid.size).astype(np.float32)


def smooth_nan(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that ignores NaN (normalised convolution); NaN stays NaN."""
    finite = np.isfinite(image)
    num = ndimage.gaussian_filter(np.where(finite, image, 0.0), sigma, mode="constant")
    den = ndimage.gaussian_filter(finite.astype(np.float64), sigma, mode="constant")
    return np.where(finite, num / np.maximum(den, 1e-12), np.nan)


def find_fovea(tmap: np.ndarray, grid: MapGrid, search_mm: float = 1.5) -> tuple[float, float] | None:
    """The fovea as the thickness minimum near the centre of the scanned area, in localizer pixels.

    The map is smoothed (sigma 0.1 mm) and searched within ``search_mm`` of the centroid of its
    defined pixels. Returns None when the map is empty.
    """
    finite = np.isfinite(tmap)
    if not finite.any():
        return None
    px_mm = grid.mm_per_pixel[0] if grid.mm_per_pixel is not None else None
    sigma = 0.1 / px_mm if px_mm else 1.0
    radius = search_mm / px_mm if px_mm else tmap.shape[0] / 8
    smooth = smooth_nan(tmap, sigma)
    rows, cols = np.nonzero(finite)
    cy, cx = rows.mean(), cols.mean()
    yy, xx = np.mgrid[0:tmap.shape[0], 0:tmap.shape[1]]
    near = finite & ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2)
    if not near.any():
        near = finite
    masked = np.where(near, smooth, np.inf)
    r, c = np.unravel_index(int(np.argmin(masked)), masked.shape)
    x, y = grid.to_localizer(np.array(float(c)), np.array(float(r)))
    return float(x), float(y)


def etdrs_sector_index(dx_mm: np.ndarray, dy_mm: np.ndarray, laterality: str) -> np.ndarray:
    """Index into :data:`ETDRS_SECTORS` of points at ``(dx, dy)`` mm from the centre (x right,
    y down on the fundus image), -1 outside the 6 mm circle. Nasal is towards the disc: image right
    for a right eye, left for a left eye (right when the laterality is unknown)."""
    r = np.hypot(dx_mm, dy_mm)
    nasal = dx_mm if laterality != "L" else -dx_mm
    theta = np.degrees(np.arctan2(-dy_mm, nasal))       # 90 = superior, 0 = nasal
    quadrant = np.select([(theta > 45) & (theta <= 135), (theta > -45) & (theta <= 45),
                          (theta > -135) & (theta <= -45)], [0, 1, 2], 3)  # S, N, I, T
    d1, d2, d3 = (d / 2 for d in ETDRS_DIAMETERS_MM)
    out = np.full(r.shape, -1, dtype=int)
    out[r <= d1] = 0
    ring1 = (r > d1) & (r <= d2)
    ring2 = (r > d2) & (r <= d3)
    out[ring1] = 1 + quadrant[ring1]
    out[ring2] = 5 + quadrant[ring2]
    return out


def _sector_areas() -> np.ndarray:
    d1, d2, d3 = (d / 2 for d in ETDRS_DIAMETERS_MM)
    return np.array([math.pi * d1 ** 2] + [math.pi * (d2 ** 2 - d1 ** 2) / 4] * 4
                    + [math.pi * (d3 ** 2 - d2 ** 2) / 4] * 4)


def etdrs_table(tmap: np.ndarray, mm_per_pixel: tuple[float, float], centre: tuple[float, float],
                laterality: str) -> pd.DataFrame:
    """Mean thickness of the 9 ETDRS sectors of a map.

    Args:
        tmap: ``(H, W)`` micrometres, NaN (or 0) = undefined.
        mm_per_pixel: ``(x, y)`` mm per map pixel.
        centre: ``(col, row)`` of the fovea in map pixels.
        laterality: "R", "L" (or "" = treated as R).

    Returns:
        One row per sector (:data:`ETDRS_SECTORS` order): ``sector``, ``mean_um`` (NaN when no
        pixel is defined), ``volume_mm3`` (mean thickness x the full sector area, as the HEYEX
        software reports it), ``valid_fraction`` (defined pixels / pixels in the sector),
        ``pixels``.
    """
    m = np.asarray(tmap, dtype=np.float64)
    m = np.where(m > 0, m, np.nan)
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]].astype(np.float64)
    idx = etdrs_sector_index((xx - centre[0]) * mm_per_pixel[0], (yy - centre[1]) * mm_per_pixel[1],
                             laterality)
    areas = _sector_areas()
    rows = []
    for k, name in enumerate(ETDRS_SECTORS):
        sel = idx == k
        vals = m[sel]
        ok = np.isfinite(vals)
        mean = float(vals[ok].mean()) if ok.any() else float("nan")
        rows.append({"sector": name, "mean_um": mean, "volume_mm3": mean / 1000.0 * areas[k],
                     "valid_fraction": float(ok.mean()) if sel.any() else 0.0,
                     "pixels": int(sel.sum())})
    return pd.DataFrame(rows)


def total_variation(tmap: np.ndarray) -> float:
    """DeepRT's total-variation quality score of a thickness map (see the module docstring).

    Args:
        tmap: ``(S, S)`` micrometres with 0 (DeepRT) or NaN where undefined.
    """
    lbl = np.where(np.isfinite(tmap), np.asarray(tmap, dtype=np.float64), 0.0)
    size = lbl.shape[0]
    start = int(round(30 * size / 128))
    end = size - start
    crop = lbl[start:end, start:end]
    span = np.nanmax(lbl) - np.nanmin(lbl)
    if span <= 0:
        return float("nan")
    tv = np.nanmean(np.abs(np.ediff1d(crop.flatten()))) / span
    tv_t = np.nanmean(np.abs(np.ediff1d(np.transpose(crop).flatten()))) / span
    return float((tv + tv_t) / 2.0)


def map_quality(tmap: np.ndarray, threshold: float = TV_THRESHOLD,
                min_defined: float = 0.2) -> dict[str, Any]:
    """Quality of a thickness map for training.

    Returns:
        ``tv`` (:func:`total_variation`), ``defined_fraction`` (finite pixels > 0), ``nan_pixels``,
        ``passes`` (no NaN, ``tv <= threshold``, at least ``min_defined`` defined) and ``reasons``
        (why it fails, empty when it passes).
    """
    m = np.asarray(tmap, dtype=np.float64)
    nan = int((~np.isfinite(m)).sum())
    defined = float((np.isfinite(m) & (m > 0)).mean())
    tv = total_variation(m)
    reasons = []
    if nan:
        reasons.append(f"{nan} NaN pixels")
    if not np.isfinite(tv):
        reasons.append("flat or empty map")
    elif tv > threshold:
        reasons.append(f"total variation {tv:.4f} > {threshold}")
    if defined < min_defined:
        reasons.append(f"only {defined:.0%} of the map defined (< {min_defined:.0%})")
    return {"tv": tv, "defined_fraction": defined, "nan_pixels": nan, "passes": not reasons,
            "reasons": reasons}

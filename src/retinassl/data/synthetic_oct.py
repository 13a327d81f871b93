"""Synthetic OCT volumes, retinal-thickness maps and infrared images paired with a synthetic eye.

:func:`render_oct` scans the macula of a :class:`~retinassl.data.synthetic_eye.SyntheticEye`
like a Heidelberg Spectralis 20x20 degree volume: ``n_bscans`` horizontal B-scans, each of ``width``
A-scans and ``depth`` rows, centred on the fovea and covering about 5.9 x 5.8 mm. The retina is a
stack of layers with analytic thicknesses (foveal pit, parafoveal ring, RNFL thickening towards the
disc) that sit on a curved, tilted Bruch's membrane; the B-scans are rendered from the exact
boundaries (partial-volume at sub-pixel precision), with speckle, the shadows of the fundus
vessels, hyper-reflective foci under hard exudates, and two thickenings of the INL, OPL and ONL:
focal leakage around the microaneurysms and haemorrhages in the scanned area (any DR eye; it grows
with the local lesion area, see :func:`retinassl.data.synthetic_retina.leakage_thickening`), and,
when the eye has macular oedema, a larger one around the leakage point with optional intraretinal
fluid cysts. The layer thicknesses and boundaries come from :mod:`retinassl.data.synthetic_retina`.

Conventions
-----------
- ``volume[i, r, c]``: B-scan ``i`` (0 = most superior for an unrotated scan), row ``r`` (0 = top,
  vitreous), A-scan ``c``.
- ``spacing_mm = (between B-scans, axial, lateral)``, i.e. the spacing along the volume's axes. The
  default 49 x 496 x 512 volume has (0.12, 0.00387, 0.0115) mm; other shapes keep the physical extent
  (spacing scales with the sample count).
- ``boundaries[k, i, c]``: continuous row coordinate of boundary :data:`BOUNDARY_NAMES` ``[k]``,
  where pixel row ``r`` spans ``[r - 0.5, r + 0.5)``; the boundaries never cross (top to bottom).
- ``bscan_start[i]`` / ``bscan_end[i]``: fundus pixel ``(x, y)`` of A-scan 0 and A-scan ``width-1``
  of B-scan ``i`` (A-scans equally spaced between them).
- ``thickness[i, c] = (BM - ILM) * axial_mm * 1000`` micrometres, exactly.
- ``thickness_map``: ``(map_size, map_size)`` float32 micrometres on a square grid in fundus
  coordinates centred on the fovea, ``ir_field_mm`` wide (the field of the infrared image, as in the
  DeepRT maps, where the scanned area fills the central two thirds). Each map pixel centre is mapped
  to fractional (B-scan, A-scan) coordinates and ``thickness`` is bilinearly interpolated there;
  outside the scanned area the value is **0** (the DeepRT convention; never NaN).
  ``map_affine`` (2x3) maps map pixel ``(col, row)`` to fundus ``(x, y)``.
- ``ir_image``: ``(ir_size, ir_size)`` uint8 infrared-like fundus image of the same field;
  ``ir_affine`` maps its pixel ``(col, row)`` to fundus ``(x, y)``, so ``thickness_map`` is
  registered to it (same field, different resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from retinassl.data.synthetic_eye import SyntheticEye, as_generator
from retinassl.data.synthetic_retina import boundary_rows, layer_thickness, sample_fundus

BOUNDARY_NAMES: tuple[str, ...] = ("ILM", "RNFL_GCL", "GCL_IPL", "IPL_INL", "INL_OPL", "OPL_ONL",
                                   "ELM", "ISOS", "RPE", "BM")
LAYER_NAMES: tuple[str, ...] = ("RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "IS", "OS", "RPE")
DEFAULT_SHAPE: tuple[int, int, int] = (49, 496, 512)
TINY_SHAPE: tuple[int, int, int] = (9, 96, 64)
_SPECTRALIS = (0.12, 0.00387, 0.0115)        # spacing of the default shape, mm
# linear reflectivity: vitreous, the nine layers, choroid (display = reflectivity ** 0.25)
_REFLECTIVITY = np.array([2e-5, 0.5, 0.06, 0.13, 0.014, 0.12, 0.009, 0.02, 0.08, 1.0, 0.25],
                         np.float32)


@dataclass
class SyntheticOCT:
    """A synthetic macular OCT volume with its exact ground truth (see the module conventions).

    Attributes:
        volume: ``(n_bscans, depth, width)`` uint8 (or float32 display values in [0, ~1.2]).
        boundaries: ``(10, n_bscans, width)`` float32 rows of :data:`BOUNDARY_NAMES`.
        spacing_mm: ``(between B-scans, axial, lateral)`` in mm.
        bscan_start, bscan_end: ``(n_bscans, 2)`` float64 fundus ``(x, y)`` of the first/last A-scan.
        thickness: ``(n_bscans, width)`` float32 ILM-BM thickness in micrometres.
        thickness_map: ``(map_size, map_size)`` float32 micrometres, 0 outside the scan.
        map_affine: ``(2, 3)`` float64, map pixel ``(col, row, 1)`` -> fundus ``(x, y)``.
        ir_image: ``(ir_size, ir_size)`` uint8 infrared-like fundus image.
        ir_affine: ``(2, 3)`` float64, IR pixel ``(col, row, 1)`` -> fundus ``(x, y)``.
        fluid: ``(n_bscans, depth, width)`` bool intraretinal fluid, or None when there is none.
        eye: "L" or "R".
        fundus_size: side of the fundus image the coordinates refer to.
    """

    volume: np.ndarray
    boundaries: np.ndarray
    spacing_mm: tuple[float, float, float]
    bscan_start: np.ndarray
    bscan_end: np.ndarray
    thickness: np.ndarray
    thickness_map: np.ndarray
    map_affine: np.ndarray
    ir_image: np.ndarray
    ir_affine: np.ndarray
    fluid: np.ndarray | None
    eye: str
    fundus_size: int


def spacing_for_shape(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel spacing (mm) that keeps the Spectralis 49 x 496 x 512 extent for another shape."""
    n, d, w = shape
    if n < 2 or d < 16 or w < 8:
        raise ValueError(f"OCT shape must be at least (2, 16, 8), got {shape}")
    ref_n, ref_d, ref_w = DEFAULT_SHAPE
    return (_SPECTRALIS[0] * (ref_n - 1) / (n - 1), _SPECTRALIS[1] * ref_d / d,
            _SPECTRALIS[2] * ref_w / w)


def _field_affine(eye: SyntheticEye, field_mm: float, size: int) -> np.ndarray:
    """2x3 affine from the pixels of a ``size``-pixel square grid, ``field_mm`` wide and centred
    on the fovea, to fundus ``(x, y)``."""
    cell = field_mm / size / eye.anatomy.pixel_mm
    fx, fy = eye.anatomy.fovea
    off = (0.5 - size / 2.0) * cell
    return np.array([[cell, 0.0, fx + off], [0.0, cell, fy + off]])


# -- rendering ----------------------------------------------------------------------------------
def _below(rows: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of each pixel ``(rows, cols)`` lying below the surface at rows ``b`` ``(cols,)``."""
    return np.clip(rows + 0.5 - b[None, :], 0.0, 1.0)


def _render_bscan(rng: np.random.Generator, b: np.ndarray, depth: int, axial_mm: float,
                  lateral_mm: float, vessel: np.ndarray, exudate: np.ndarray,
                  cysts: np.ndarray | None) -> np.ndarray:
    """Speckled linear intensity ``(depth, width)`` of one B-scan from its boundaries ``(10, W)``."""
    w = b.shape[1]
    rows = np.arange(depth, dtype=np.float32)[:, None]
    bf = b.astype(np.float32)
    refl = np.full((depth, w), _REFLECTIVITY[0], np.float32)
    for k in range(10):
        refl += (_REFLECTIVITY[k + 1] - _REFLECTIVITY[k]) * _below(rows, bf[k])
    px = lambda um: max(0.6, um / 1000.0 / axial_mm)         # noqa: E731
    band = lambda c, wd: _below(rows, c - wd / 2) - _below(rows, c + wd / 2)  # noqa: E731
    refl += 0.2 * band(bf[6], px(4))                       # external limiting membrane
    refl += 0.6 * band(bf[7] + px(3), px(8))               # ellipsoid zone (IS/OS)
    refl += 0.3 * band(bf[8] - px(5), px(6))               # interdigitation zone
    # choroid: decays with depth, dark vessel lumens; sclera below
    z_mm = (rows - bf[9][None, :]) * axial_mm
    below_bm = _below(rows, bf[9])
    lum = cv2.resize(rng.standard_normal((max(2, depth // 10), max(2, w // 10))).astype(np.float32),
                     (w, depth), interpolation=cv2.INTER_CUBIC)
    choroid = np.exp(-np.clip(z_mm, 0, None) / 0.055) * (1.0 - 0.85 * np.clip(lum, 0, 1)) * 0.35
    refl = refl * (1 - below_bm) + below_bm * (choroid + 1.5e-4)
    # retinal vessels (bright in the inner retina) with shadows below; exudate foci in the OPL
    inner = _below(rows, bf[0]) - _below(rows, bf[2])
    refl += 0.3 * vessel[None, :] * inner
    refl *= 1.0 - 0.75 * vessel[None, :] * _below(rows, bf[2])
    opl = band((bf[4] + bf[5]) / 2, np.maximum(bf[5] - bf[4], 1.0))
    refl += 1.2 * exudate[None, :] * opl
    refl *= 1.0 - 0.6 * exudate[None, :] * _below(rows, bf[5])
    if cysts is not None:
        refl = np.where(cysts, _REFLECTIVITY[0] * 2, refl)
    # texture, point-spread blur, speckle (average of a few frames: gamma-distributed)
    tex = cv2.resize(rng.standard_normal((max(2, depth // 6), max(2, w // 24))).astype(np.float32),
                     (w, depth), interpolation=cv2.INTER_CUBIC)
    refl *= np.clip(1.0 + 0.12 * tex, 0.5, 1.5)
    psf = (max(0.3, 0.0015 / lateral_mm * 2), max(0.3, 0.0035 / axial_mm))
    refl = cv2.GaussianBlur(refl, (0, 0), sigmaX=psf[0], sigmaY=psf[1])
    speckle = rng.standard_gamma(3.0, size=(depth, w), dtype=np.float32) / 3.0
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=0.7, sigmaY=0.5)
    return refl * speckle


def _cysts(rng: np.random.Generator, eye: SyntheticEye, b_all: np.ndarray, u: np.ndarray,
           v: np.ndarray, e_u: np.ndarray, e_v: np.ndarray) -> list[tuple[float, ...]]:
    """Intraretinal fluid cysts as ellipsoids ``(u_mm, v_mm, row, ru_mm, rv_mm, r_rows)`` in scan
    coordinates (``u`` along the B-scans, ``v`` across them)."""
    oed = eye.oedema
    a = eye.anatomy
    n = int(rng.integers(3, 12))
    params = rng.random((n, 6))
    if oed is None:
        return []
    ox = (oed.centre[0] - a.fovea[0]) * a.pixel_mm
    oy = (oed.centre[1] - a.fovea[1]) * a.pixel_mm
    cx, cy = ox * e_u[0] + oy * e_u[1], ox * e_v[0] + oy * e_v[1]
    out = []
    for p in params[: max(1, int(n * min(1.0, oed.amplitude_um / 150)))]:
        ang, rad = p[0] * 2 * math.pi, oed.sigma_mm * 0.9 * math.sqrt(p[1])
        cu, cv = cx + rad * math.cos(ang), cy + rad * math.sin(ang)
        # nearest A-scan to read the layer rows there
        i = int(np.argmin(np.abs(v[:, 0] - cv)))
        j = int(np.argmin(np.abs(u[0, :] - cu)))
        layer = 3 if p[2] < 0.4 else 5                     # INL or ONL
        top, bot = b_all[layer, i, j], b_all[layer + 1, i, j]
        if bot - top < 3:
            continue
        row = top + (bot - top) * (0.35 + 0.3 * p[3])
        r_rows = (bot - top) * (0.2 + 0.15 * p[4])
        ru = 0.05 + 0.12 * p[5]
        out.append((cu, cv, row, ru, ru * 0.9, r_rows))
    return out


def _ir_image(rng: np.random.Generator, eye: SyntheticEye, affine: np.ndarray,
              size: int) -> np.ndarray:
    """Infrared-like grayscale image of the field ``affine`` maps from (see module docstring)."""
    refl = eye.reflectance
    gray = (0.55 * refl[..., 0] + 0.45 * refl[..., 1] / 0.45).astype(np.float32)
    warped = cv2.warpAffine(gray, affine.astype(np.float64), (size, size),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REFLECT)
    lo, hi = np.percentile(warped, [1, 99.5])
    img = np.clip((warped - lo) / max(1e-6, hi - lo), 0, 1.2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    img = img * (0.55 + 0.35 * (1 - 1.2 * (xx ** 2 + yy ** 2))) + 0.08
    img += rng.normal(0, 0.025, img.shape).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def render_oct(eye: SyntheticEye, rng: int | np.random.Generator, *,
               shape: tuple[int, int, int] = DEFAULT_SHAPE, oedema: bool = True,
               fluid: bool = True, dtype: str = "uint8", map_size: int = 128,
               ir_size: int = 256, ir_field_mm: float = 8.8,
               scan_angle_deg: float = 0.0) -> SyntheticOCT:
    """Render the macular OCT volume, its thickness map and an infrared image of ``eye``.

    Args:
        eye: the eye (its anatomy, vessels, exudates and oedema drive the OCT).
        rng: seed or Generator. With the same seed, ``oedema=False`` renders the same retina
            without the oedema (every random draw happens either way).
        shape: ``(n_bscans, depth, width)``; :data:`DEFAULT_SHAPE` is Spectralis-like,
            :data:`TINY_SHAPE` is for tests.
        oedema: apply the eye's thickenings: the leakage around its red lesions and its macular
            oedema if it has one (False: the same retina without them).
        fluid: draw intraretinal fluid cysts inside the oedema.
        dtype: "uint8" (display values 0-255) or "float32" (display values, RPE ~ 0.9).
        map_size: side of the thickness map grid.
        ir_size: side of the infrared image; ``ir_field_mm`` its (and the map's) field width.
        scan_angle_deg: rotation of the scan pattern on the fundus (0 = horizontal B-scans).

    Returns:
        :class:`SyntheticOCT`.
    """
    rng = as_generator(rng)
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
    n, depth, width = shape
    s_b, s_ax, s_lat = spacing_for_shape(shape)
    r_geo, r_layers, r_cyst, r_img, r_ir = (np.random.default_rng(int(s)) for s in
                                            rng.integers(0, 2 ** 63, size=5))
    a = eye.anatomy
    th = math.radians(scan_angle_deg)
    e_u, e_v = np.array([math.cos(th), math.sin(th)]), np.array([-math.sin(th), math.cos(th)])
    uu = (np.arange(width) - (width - 1) / 2.0) * s_lat
    vv = (np.arange(n) - (n - 1) / 2.0) * s_b
    u_mm, v_mm = np.meshgrid(uu, vv)                     # (n, W) scan coordinates
    # fundus-direction offsets from the fovea (mm), used by the anatomy
    fx_mm = u_mm * e_u[0] + v_mm * e_v[0]
    fy_mm = u_mm * e_u[1] + v_mm * e_v[1]
    fovea = np.array(a.fovea)
    start = fovea + (uu[0] * e_u + vv[:, None] * e_v) / a.pixel_mm
    end = fovea + (uu[-1] * e_u + vv[:, None] * e_v) / a.pixel_mm
    t = layer_thickness(r_layers, eye, fx_mm, fy_mm, oedema)
    b = boundary_rows(r_geo, t, fx_mm, fy_mm, depth, s_ax)
    cyst_list = _cysts(r_cyst, eye, b, u_mm, v_mm, e_u, e_v) if (oedema and fluid) else []
    # fundus features along each B-scan line
    xs = fovea[0] + fx_mm / a.pixel_mm
    ys = fovea[1] + fy_mm / a.pixel_mm
    vcov = eye.vessel_coverage if eye.vessel_coverage is not None else \
        eye.masks["vessels"].astype(np.float32)
    vessel = sample_fundus(vcov, xs.ravel(), ys.ravel()).reshape(n, width)
    exud = sample_fundus(eye.masks["EX"].astype(np.float32), xs.ravel(), ys.ravel()).reshape(n, width)
    vol = np.empty((n, depth, width), np.uint8 if dtype == "uint8" else np.float32)
    fluid_mask = np.zeros((n, depth, width), bool) if cyst_list else None
    rows = np.arange(depth, dtype=np.float64)[:, None]
    for i in range(n):
        cy_mask = None
        for cu, cv_, crow, ru, rv, rr in cyst_list:
            dv = (v_mm[i, 0] - cv_) / rv
            if abs(dv) >= 1:
                continue
            scale = math.sqrt(1 - dv * dv)
            m = (((u_mm[i][None, :] - cu) / (ru * scale)) ** 2
                 + ((rows - crow) / (rr * scale)) ** 2) <= 1
            cy_mask = m if cy_mask is None else (cy_mask | m)
        if cy_mask is not None and fluid_mask is not None:
            fluid_mask[i] = cy_mask
        inten = _render_bscan(r_img, b[:, i, :], depth, s_ax, s_lat, vessel[i], exud[i], cy_mask)
        disp = np.power(np.maximum(inten, 1e-9), 0.25) * 0.9
        if dtype == "uint8":
            vol[i] = np.clip(disp * 255 + 0.5, 0, 255).astype(np.uint8)
        else:
            vol[i] = disp
    thickness = ((b[9] - b[0]) * s_ax * 1000.0).astype(np.float32)
    map_affine = _field_affine(eye, ir_field_mm, map_size)
    ir_affine = _field_affine(eye, ir_field_mm, ir_size)
    tmap = thickness_map_from_scan(thickness, start, end, map_affine, map_size)
    ir = _ir_image(r_ir, eye, ir_affine, ir_size)
    return SyntheticOCT(vol, b.astype(np.float32), (s_b, s_ax, s_lat), start, end, thickness, tmap,
                        map_affine, ir, ir_affine, fluid_mask, a.eye, a.size)


def thickness_map_from_scan(thickness: np.ndarray, start: np.ndarray, end: np.ndarray,
                            map_affine: np.ndarray, map_size: int) -> np.ndarray:
    """Resample per-A-scan thickness onto a map grid in fundus coordinates.

    Args:
        thickness: ``(n_bscans, width)`` micrometres.
        start, end: ``(n_bscans, 2)`` fundus ``(x, y)`` of the first and last A-scan of each B-scan
            (parallel, equally spaced B-scans).
        map_affine: ``(2, 3)`` map pixel ``(col, row)`` -> fundus ``(x, y)``.
        map_size: side of the map.

    Returns:
        ``(map_size, map_size)`` float32: bilinear interpolation of ``thickness`` at each map pixel
        centre's fractional (B-scan, A-scan) position; 0 outside the scanned area.
    """
    n, w = thickness.shape
    a_vec = (end[0] - start[0]) / (w - 1)                 # fundus px per A-scan
    b_vec = (start[-1] - start[0]) / (n - 1)              # fundus px per B-scan
    inv = np.linalg.inv(np.stack([a_vec, b_vec], axis=1))
    cols, rows = np.meshgrid(np.arange(map_size, dtype=np.float64), np.arange(map_size,
                                                                             dtype=np.float64))
    x = map_affine[0, 0] * cols + map_affine[0, 1] * rows + map_affine[0, 2]
    y = map_affine[1, 0] * cols + map_affine[1, 1] * rows + map_affine[1, 2]
    d = np.stack([x - start[0, 0], y - start[0, 1]])
    j = inv[0, 0] * d[0] + inv[0, 1] * d[1]
    i = inv[1, 0] * d[0] + inv[1, 1] * d[1]
    eps = 1e-6
    inside = (j >= -eps) & (j <= w - 1 + eps) & (i >= -eps) & (i <= n - 1 + eps)
    vals = ndimage.map_coordinates(thickness.astype(np.float64),
                                   [np.clip(i, 0, n - 1), np.clip(j, 0, w - 1)], order=1)
    return np.where(inside, vals, 0.0).astype(np.float32)

"""The retina under a synthetic OCT scan (:func:`retinassl.data.synthetic_oct.render_oct` renders
it): the thicknesses of the nine layers of :data:`retinassl.data.synthetic_oct.LAYER_NAMES` at scan
positions (foveal pit, parafoveal ring, RNFL thickening towards the disc, gentle ripples), the
thickening of the INL, OPL and ONL by leaking lesions (:func:`leakage_thickening`) and by macular
oedema, and the boundary rows stacked on a curved, tilted Bruch's membrane.

Scan positions ``(u, v)`` are in mm from the fovea along the fundus x/y directions.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from retinassl.data.synthetic_eye import SyntheticEye


LEAK_SIGMA_MM = 0.35         # neighbourhood over which leaking lesions thicken the retina


LEAK_AREA_MM2 = 0.05         # lesion area (Gaussian-weighted) that gives 63 % of the maximum


LEAK_MAX_UM = 60.0           # thickening at saturation


_OEDEMA_SPLIT = ((3, 0.35), (4, 0.2), (5, 0.45))    # share of a thickening in the INL, OPL, ONL


def leakage_thickening(eye: SyntheticEye, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Extra retinal thickness (um) from leaking microaneurysms and haemorrhages at scan positions
    ``(u, v)`` (mm from the fovea, fundus x/y directions).

    ``LEAK_MAX_UM * (1 - exp(-A / LEAK_AREA_MM2))`` where ``A`` is the area (mm^2) of the MA and HE
    masks weighted by a Gaussian of ``LEAK_SIGMA_MM`` around the position, so one microaneurysm
    gives a few micrometres and a cluster of haemorrhages tens. Deterministic (no random draw): the
    same eye always has the same thickening, and a healthy eye none.
    """
    a = eye.anatomy
    lesions = (eye.masks["MA"] | eye.masks["HE"]).astype(np.float32)
    if not lesions.any():
        return np.zeros(np.shape(u))
    sigma = LEAK_SIGMA_MM / a.pixel_mm
    area = ndimage.gaussian_filter(lesions, sigma) * (2 * math.pi * sigma ** 2 * a.pixel_mm ** 2)
    xs = a.fovea[0] + np.asarray(u) / a.pixel_mm
    ys = a.fovea[1] + np.asarray(v) / a.pixel_mm
    local = sample_fundus(area, xs.ravel(), ys.ravel()).reshape(np.shape(u))
    return LEAK_MAX_UM * (1.0 - np.exp(-np.maximum(local, 0.0) / LEAK_AREA_MM2))


def layer_thickness(rng: np.random.Generator, eye: SyntheticEye, u: np.ndarray, v: np.ndarray,
                    with_oedema: bool) -> np.ndarray:
    """Thickness (um) of :data:`~retinassl.data.synthetic_oct.LAYER_NAMES` at scan positions
    ``(u, v)`` (mm from the fovea, fundus x/y directions): ``(9,) + u.shape`` float64."""
    a = eye.anatomy
    nasal = 1.0 if a.eye == "R" else -1.0
    s_in = eye.traits.thickness_scale * rng.uniform(0.97, 1.03)
    sig_p = rng.uniform(0.38, 0.5)
    pit_depth = rng.uniform(0.86, 0.92)
    r = np.sqrt(u ** 2 + (1.05 * v) ** 2)
    pit = 1.0 - pit_depth * np.exp(-r ** 2 / (2 * sig_p ** 2))
    inner = pit * (0.82 + 0.28 * np.exp(-((r - 1.2) / 1.0) ** 2))
    odx = (a.od_centre[0] - a.fovea[0]) * a.pixel_mm
    ody = (a.od_centre[1] - a.fovea[1]) * a.pixel_mm
    d_od = np.maximum(np.hypot(u - odx, v - ody) - a.disc_diameter_mm / 2, 0.0)
    bundles = np.exp(-((np.abs(v) - 2.0) / 0.8) ** 2) * (0.5 + 0.5 * np.clip(nasal * u / 3, 0, 1))
    rnfl = s_in * (14 + 30 * np.exp(-d_od / 1.8) + 12 * bundles) * pit
    onl = 68 + rng.uniform(50, 68) * np.exp(-r ** 2 / (2 * 0.6 ** 2)) - 1.5 * r
    t = np.stack([rnfl, s_in * 52 * inner, s_in * 40 * inner, s_in * 38 * inner, s_in * 30 * inner,
                  onl, 24 + 6 * np.exp(-r ** 2 / (2 * 0.6 ** 2)),
                  32 + 14 * np.exp(-r ** 2 / (2 * 0.5 ** 2)), np.full_like(r, 17.0)])
    # gentle smooth ripples so layers are not perfectly analytic surfaces
    ripple = rng.standard_normal((9, 4, 4))
    for k in range(9):
        amp = 0.04
        field = sum(ripple[k, p, q] * np.cos((p + 1) * u * 0.7 + ripple[k, q, p])
                    * np.cos((q + 1) * v * 0.7) for p in range(2) for q in range(2)) / 2
        t[k] *= 1.0 + amp * field
    if not with_oedema:
        return t
    delta = leakage_thickening(eye, u, v)
    oed = eye.oedema
    if oed is not None:
        cx = (oed.centre[0] - a.fovea[0]) * a.pixel_mm
        cy = (oed.centre[1] - a.fovea[1]) * a.pixel_mm
        delta = delta + oed.amplitude_um * np.exp(-((u - cx) ** 2 + (v - cy) ** 2)
                                                  / (2 * oed.sigma_mm ** 2))
    for k, share in _OEDEMA_SPLIT:
        t[k] += share * delta
    return t


def boundary_rows(rng: np.random.Generator, t: np.ndarray, u: np.ndarray, v: np.ndarray,
                  depth: int, axial_mm: float) -> np.ndarray:
    """Boundary rows ``(10,) + u.shape`` from layer thicknesses, stacked on a curved, tilted BM."""
    row0 = depth * rng.uniform(0.62, 0.7)
    curv = rng.uniform(0.006, 0.02)                     # mm of sag per mm^2
    tilt = rng.normal(0, 0.02, 2)                        # mm per mm
    bm = row0 - (curv * (u ** 2 + v ** 2) + tilt[0] * u + tilt[1] * v) / axial_mm
    b = np.empty((10,) + u.shape)
    b[9] = bm
    for k in range(8, -1, -1):                          # layer k lies between boundaries k, k+1
        b[k] = b[k + 1] - t[k] / 1000.0 / axial_mm
    return b


def sample_fundus(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear samples of a 2-D float image at fundus points (0 outside)."""
    return ndimage.map_coordinates(img, [ys, xs], order=1, mode="constant", cval=0.0)

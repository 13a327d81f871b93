"""Annotation-free ILM and RPE/Bruch's membrane boundaries by graph search on directional gradients.

After Chiu et al., "Automatic segmentation of seven retinal layers in SDOCT images congruent with
expert manual segmentation", Opt Express 18(18):19413-19428, 2010: "This paper presents an automatic
approach for segmenting retinal layers in Spectral Domain Optical Coherence Tomography images using
graph theory and dynamic programming." Their graph has one node per pixel and edge weights
``w_ab = 2 - (g_a + g_b) + w_min`` from the vertical gradients ``g`` (normalised to [0, 1]) of the two
nodes, so that the cheapest left-to-right path follows the strongest edge of the chosen polarity;
the ILM and the inner/outer-segment junction are the two most prominent dark-to-bright edges, the
upper of the two is the ILM, and the RPE/choroid boundary is searched below them on the
bright-to-dark gradient, each search limited to a region cut out by the boundaries already found.

Here the path takes one node per column (an A-scan) and its row changes by at most ``max_jump`` rows
between neighbouring columns; dynamic programming (:func:`retinassl.oct.boundaries._viterbi`, the
same Viterbi pass the probability-map extraction uses) maximises ``sum_c g(t_c) - smoothness *
sum_c |t_c - t_{c-1}|``, the per-column form of Chiu's shortest path. Steps:

1. **Speckle-robust smoothing**: a 3 x 3 median filter, then an anisotropic Gaussian (sigma in
   micrometres, wider laterally) on the image scaled to [0, 1].
2. **Directional gradients**: the forward vertical difference ``I[t] - I[t - 1]`` sits on the cut
   between rows ``t - 1`` and ``t`` (boundary row ``t - 0.5``, the convention of
   :mod:`retinassl.oct.layers`); its positive part is the dark-to-bright image, its negative part the
   bright-to-dark image, each divided by a high percentile of ``|gradient|``.
3. **ILM**: Chiu et al. take the upper of the two most prominent dark-to-bright paths; here that
   preference for the upper edge is built into the gain: the dark-to-bright gradient times
   ``exp(-n / vitreous_decay)``, ``n`` the tissue rows above the cut (rows brighter than a level
   between the vitreous and the Otsu threshold, so the dim outer nuclear layer and the foveal floor
   count as tissue and a noisy vitreous does not). The IS/OS and RPE edges, bright as they are, have
   the whole retina above them; the dark foveal pit only deepens the ILM and is followed within
   ``max_jump``.
   The ILM is also kept at least ``ilm_above_band_um`` above a first trace of the outer band (the
   brightest continuous band with retina above it, over the whole depth): under a foveal pit whose
   floor is dim, the IS/OS edge has nothing bright above it and would otherwise be taken.
4. **RPE/BM**: searched only between ``min_thickness_um`` and ``max_thickness_um`` below the ILM
   (ordering and a minimum retinal thickness by construction). The hyper-reflective outer band
   (IS/OS + RPE, merged by a wide axial smoothing, normalised by the laterally running maximum of
   each A-scan so that vessel shadows keep their ridge; deeper rows get a small bonus,
   ``deeper_band_bonus``, because the RPE is the lowest of the bright outer bands: photoreceptors
   lifted by fluid or a row of exudates above it can be as bright) is traced first; Bruch's membrane is then the
   strongest bright-to-dark path from just above that ridge to ``bm_window_um[1]`` below it (the
   lower edge of the RPE, where the synthetic generator's ``BM`` lies).
5. Sub-pixel rows by a parabola through the gradient around each chosen cut.

Shadows under vessels weaken both edges for a few columns; the smoothness penalty and ``max_jump``
carry the path across them instead of letting it jump to another edge. Where an edge stays weak
for longer than ``max_gap_um`` (the optic disc, signal loss, a retina leaving the image) the
boundary is undefined (NaN).

Quality flags (:mod:`retinassl.oct.boundary_quality`, computed over the central ``assess_fraction``
of the A-scans; every parameter in :mod:`retinassl.oct.graph_search_config`) mark results not to trust: jumps (a depth change steeper than any retinal contour), a boundary at
the top or bottom of the image, a thickness outside a plausible range, low contrast (the mean
gradient along a boundary against the image's gradient noise), mostly undefined boundaries, and an
ILM held at its bound above the outer band.

Units: detection constraints are in micrometres and need the pixel spacing. When the spacing is
unknown (:attr:`retinassl.oct.volume.OCTVolume.spacing_stated` False), a *nominal* spacing is used
for the constraints only (:data:`NOMINAL_DEPTH_UM` over the image depth, :data:`NOMINAL_WIDTH_UM`
over its width: a Spectralis-like 1.9 x 6 mm B-scan); thicknesses are then reported in pixels
(:mod:`retinassl.oct.bscan_thickness`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from retinassl.oct.boundaries import _viterbi
from retinassl.oct.boundary_quality import BScanQuality, assess_quality
from retinassl.oct.graph_search_config import GraphSearchConfig
from retinassl.oct.volume import OCTVolume

NOMINAL_DEPTH_UM = 1920.0     # Spectralis: 496 rows x 3.87 um
NOMINAL_WIDTH_UM = 6000.0     # a 20-degree macular B-scan
_BLOCKED = -1e9


@dataclass
class BScanBoundaries:
    """Boundaries of one B-scan.

    Attributes:
        ilm, bm: ``(W,)`` float32 rows (continuous; row ``r`` spans ``[r - 0.5, r + 0.5)``).
        quality: the flags.
        axial_um, lateral_um: the spacing the constraints were converted with.
        spacing_stated: False when that spacing was the nominal one (thickness then in pixels).
    """

    ilm: np.ndarray
    bm: np.ndarray
    quality: BScanQuality
    axial_um: float
    lateral_um: float
    spacing_stated: bool


@dataclass
class VolumeBoundaries:
    """Boundaries of every B-scan of a volume: ``ilm``/``bm`` ``(n_bscans, W)``, one quality each."""

    ilm: np.ndarray
    bm: np.ndarray
    quality: list[BScanQuality] = field(default_factory=list)
    axial_um: float = float("nan")
    lateral_um: float = float("nan")
    spacing_stated: bool = False

    @property
    def clean(self) -> np.ndarray:
        """``(n_bscans,)`` bool."""
        return np.array([q.clean for q in self.quality], dtype=bool)


def _to_unit(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"a B-scan must be a (depth, width) array, got shape {img.shape}")
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        return img / 255.0 if img.max(initial=0) <= 255 else img / float(img.max())
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def smooth_bscan(image: np.ndarray, sigma_rows: float, sigma_cols: float) -> np.ndarray:
    """Speckle-robust smoothing: 3 x 3 median, then Gaussian ``(sigma_rows, sigma_cols)``.

    Args:
        image: ``(D, W)`` uint8 (0..255) or float (scaled to [0, 1] by its range).

    Returns:
        ``(D, W)`` float32 in [0, 1].
    """
    img = ndimage.median_filter(_to_unit(image), size=3, mode="nearest")
    return ndimage.gaussian_filter(img, (sigma_rows, sigma_cols), mode="nearest").astype(np.float32)


def vertical_gradient(smoothed: np.ndarray) -> np.ndarray:
    """Forward vertical difference on the cuts: ``(D + 1, W)`` float32, ``g[t] = I[t] - I[t - 1]``
    for ``t = 1..D-1`` (the cut between rows ``t - 1`` and ``t``), 0 on the two outer cuts."""
    d, w = smoothed.shape
    g = np.zeros((d + 1, w), dtype=np.float32)
    g[1:d] = np.diff(smoothed, axis=0)
    return g


def _best_path(gain: np.ndarray, smoothness: float, max_jump: int) -> np.ndarray:
    """Viterbi path over cuts: ``gain`` ``(T, W)`` -> cut index per column ``(W,)``."""
    return _viterbi(gain.T[None].astype(np.float64), smoothness, max_jump)[0]


def _subpixel(gain: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Boundary rows ``t - 0.5 + delta`` with ``delta`` from a parabola through the gain at the cuts
    ``t - 1, t, t + 1`` (clipped to half a row)."""
    t_max = gain.shape[0] - 1
    cols = np.arange(gain.shape[1])
    t = np.clip(path, 1, t_max - 1)
    a, b, c = gain[t - 1, cols], gain[t, cols], gain[t + 1, cols]
    denom = a - 2 * b + c
    delta = np.where(denom < -1e-9, 0.5 * (a - c) / np.where(denom < -1e-9, denom, -1.0), 0.0)
    delta = np.clip(delta, -0.5, 0.5)
    return (path - 0.5 + np.where(path == t, delta, 0.0)).astype(np.float32)


def _tissue_rows(band: np.ndarray, above_band: np.ndarray) -> np.ndarray:
    """``(D, W)`` float32, 1 where a row is tissue: the smoothed image ``band`` ``(D, W)`` exceeds
    ``v + 0.4 (T - v)``, ``v`` the vitreous level (median over A-scans of the 20th percentile of the
    rows above the outer band, ``above_band`` ``(D, W)`` bool), ``T`` the Otsu threshold of the
    image; so the dim outer nuclear layer and foveal floor count as tissue and a noisy vitreous does
    not. All ones for a blank image."""
    from skimage.filters import threshold_otsu

    if float(band.max()) <= float(band.min()):
        return np.ones_like(band, dtype=np.float32)
    masked = np.where(above_band, band, np.nan)
    usable = np.isfinite(masked).any(axis=0)
    if usable.any():
        vitreous = float(np.median(np.nanpercentile(masked[:, usable], 20, axis=0)))
    else:
        vitreous = float(band.min())
    otsu = float(threshold_otsu(band))
    level = vitreous + 0.4 * max(otsu - vitreous, 0.0)
    return (band > level).astype(np.float32)


def _cumulative(tissue: np.ndarray) -> np.ndarray:
    """``(D + 1, W)``: the tissue rows above each cut (``cum[t]`` = rows ``0..t-1``)."""
    return np.concatenate([np.zeros((1, tissue.shape[1]), np.float32), np.cumsum(tissue, axis=0)])


def _rows_above(cum: np.ndarray, margin: int) -> np.ndarray:
    """``(D + 1, W)``: the tissue rows above cut ``t - margin`` (``cum``: :func:`_cumulative`)."""
    return np.concatenate([np.zeros((margin, cum.shape[1]), np.float32), cum])[:cum.shape[0]]


def _vitreous_prior(cum: np.ndarray, above: np.ndarray, decay_rows: float, margin: int,
                    below_rows: int) -> np.ndarray:
    """``(D + 1, W)`` in [0, 1]: ``exp(-n / decay_rows) * f`` where ``n`` (``above``,
    :func:`_rows_above`) counts the tissue rows above cut ``t - margin`` and ``f`` is the fraction of
    tissue rows among the ``below_rows`` rows from ``t + margin`` down (``cum``, :func:`_cumulative`):
    only an edge with (nearly) nothing but vitreous above it and tissue below it can be the ILM
    (``margin``: the rows the smoothing spreads the edge itself over). The second factor keeps the
    path off a detached posterior hyaloid, a thin line with vitreous below."""
    d = cum.shape[0] - 1
    t = np.arange(d + 1)
    start = np.minimum(t + margin, d)
    stop = np.minimum(start + below_rows, d)
    below = (cum[stop] - cum[start]) / np.maximum(stop - start, 1)[:, None]
    return (np.exp(-above / decay_rows) * below).astype(np.float32)


def _lateral_max(column_max: np.ndarray, lateral_um: float) -> np.ndarray:
    """The brightest value of each A-scan's neighbourhood (200 um wide), so that a vessel shadow,
    which dims a few A-scans, keeps its band as the brightest relative to its neighbours."""
    return ndimage.maximum_filter1d(column_max, size=max(3, int(round(200.0 / lateral_um)) | 1))


def _region(depth: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``(depth + 1, W)`` bool: cuts ``t`` with ``top[c] <= t <= bottom[c]``."""
    t = np.arange(depth + 1)[:, None]
    return (t >= top[None]) & (t <= bottom[None])


def _undefined_columns(edge_gain: np.ndarray, window: int, weak: float, max_gap: int) -> np.ndarray:
    """``(W,)`` bool: columns whose running-mean edge strength is below ``weak``, except interior
    runs of at most ``max_gap`` columns (bridged by the path)."""
    strength = ndimage.uniform_filter1d(edge_gain.astype(np.float64), size=max(1, window),
                                        mode="nearest")
    bad = strength < weak
    if not bad.any():
        return bad
    edges = np.flatnonzero(np.diff(np.concatenate([[0], bad.astype(np.int8), [0]])))
    out = np.zeros_like(bad)
    for start, stop in zip(edges[::2], edges[1::2]):
        if start == 0 or stop == len(bad) or stop - start > max_gap:
            out[start:stop] = True
    return out


def detect_boundaries(image: np.ndarray, axial_um: float | None = None,
                      lateral_um: float | None = None,
                      config: GraphSearchConfig = GraphSearchConfig()) -> BScanBoundaries:
    """ILM and Bruch's membrane of one B-scan, with quality flags (see the module docstring).

    Args:
        image: ``(D, W)`` B-scan, row 0 on the vitreous side (uint8 0..255 or float).
        axial_um, lateral_um: micrometres per pixel; None (both) = unknown, the nominal spacing
            (:data:`NOMINAL_DEPTH_UM` / D, :data:`NOMINAL_WIDTH_UM` / W) scales the constraints.
        config: parameters.

    Returns:
        :class:`BScanBoundaries` with ``(W,)`` rows, ILM above BM in every column.
    """
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 8:
        raise ValueError(f"a B-scan must be a (depth, width) array of at least 8 x 8, got {img.shape}")
    d, w = img.shape
    stated = axial_um is not None and lateral_um is not None
    ax = float(axial_um) if stated else NOMINAL_DEPTH_UM / d
    lat = float(lateral_um) if stated else NOMINAL_WIDTH_UM / w
    c = config
    rows_of = lambda um: um / ax  # noqa: E731
    max_jump = max(1, int(math.ceil(c.max_slope * lat / ax)))
    sm = smooth_bscan(img, max(0.5, rows_of(c.smooth_axial_um)), max(0.5, c.smooth_lateral_um / lat))
    g = vertical_gradient(sm)
    scale = float(np.percentile(np.abs(g), 99.5))
    scale = scale if scale > 1e-6 else 1.0
    d2b = np.clip(g / scale, 0.0, 1.0)                     # dark-to-bright, (D + 1, W)
    b2d = np.clip(-g / scale, 0.0, 1.0)                    # bright-to-dark
    # noise of the vertical gradient (robust standard deviation), for the contrast measure
    noise = 1.4826 * float(np.median(np.abs(g[1:d] - np.median(g[1:d]))))

    band_rows = max(1.0, rows_of(c.band_smooth_um))
    band = ndimage.gaussian_filter(_to_unit(img), (band_rows, max(0.5, c.smooth_lateral_um / lat)),
                                   mode="nearest")
    band_cut = np.concatenate([band[:1], band], axis=0)      # value of row t at cut t (row below)
    sep = max(2, int(round(rows_of(c.min_thickness_um))))
    t_idx = np.arange(d + 1)[:, None]

    brightest = np.argmax(band, axis=0)                      # rows above it: vitreous level
    tissue = _tissue_rows(band, np.arange(d)[:, None] < brightest[None] - sep)
    margin = int(math.ceil(2 * band_rows))
    # -- the outer band (IS/OS + RPE): a first trace over the whole depth of the brightest
    # continuous band with the retina above it (a nerve fibre layer thickened near the disc can be
    # as bright, but has only vitreous above), which bounds the ILM from below
    cum = _cumulative(tissue)
    above = _rows_above(cum, margin)
    deep = 1.0 - np.exp(-above / max(1.0, rows_of(c.outer_band_depth_um)))
    band_ridge = _best_path(deep * band_cut / np.maximum(_lateral_max(band_cut.max(axis=0), lat), 1e-6)[None],
                            c.smoothness, max_jump)
    # -- ILM: the strongest dark-to-bright path with only vitreous above it, at least
    # ``ilm_above_band_um`` above the outer band (at the fovea the IS/OS edge, with only the dim
    # outer nuclear layer above it, would otherwise take the ILM's place)
    ilm_gain = d2b * _vitreous_prior(cum, above, max(1.0, rows_of(c.vitreous_decay_um)), margin, sep)
    ilm_limit = np.maximum(band_ridge - max(sep, int(round(rows_of(c.ilm_above_band_um)))), 1)
    ilm_gain = np.where(t_idx <= ilm_limit[None], ilm_gain, _BLOCKED)
    ilm_cut = _best_path(ilm_gain, c.smoothness, max_jump)
    ilm = _subpixel(d2b, ilm_cut)

    # -- RPE/BM: the hyper-reflective outer band (IS/OS + RPE merged by the band smoothing) between
    # the minimum and maximum thickness below the ILM, then its lower edge
    lo = np.minimum(ilm_cut + sep, d - 1)
    hi = np.minimum(ilm_cut + max(sep + 1, int(round(rows_of(c.max_thickness_um)))), d)
    region = _region(d, lo, hi)
    col_max = _lateral_max(np.where(region, band_cut, 0.0).max(axis=0), lat)
    span = max(1.0, rows_of(c.max_thickness_um - c.min_thickness_um))
    depth_bonus = c.deeper_band_bonus * np.clip((t_idx - lo[None]) / span, 0, 1)
    ridge_gain = np.where(region, band_cut / np.maximum(col_max, 1e-6)[None] + depth_bonus, _BLOCKED)
    ridge = _best_path(ridge_gain, c.smoothness, max_jump)
    up, down = rows_of(c.bm_window_um[0]), rows_of(c.bm_window_um[1])
    bm_region = region & _region(d, ridge - int(round(up)), ridge + max(2, int(round(down))))
    bm_gain = np.where(bm_region, b2d, _BLOCKED)
    bm_cut = _best_path(bm_gain, c.smoothness, max_jump)
    bm = _subpixel(b2d, bm_cut)
    bm = np.maximum(bm, ilm + 1.0).astype(np.float32)

    cols = np.arange(w)
    window = max(1, int(round(c.weak_window_um / lat)))
    max_gap = max(1, int(round(c.max_gap_um / lat)))
    weak = c.weak_contrast * noise
    ilm[_undefined_columns(g[ilm_cut, cols], window, weak, max_gap)] = np.nan
    bm[_undefined_columns(-g[bm_cut, cols], window, weak, max_gap)] = np.nan
    quality = assess_quality(ilm, bm, d, ax, lat, config,
                             contrast_ilm=_contrast(g, ilm_cut, noise),
                             contrast_bm=_contrast(-g, bm_cut, noise), ilm_at_bound=ilm_cut >= ilm_limit)
    return BScanBoundaries(ilm, bm, quality, ax, lat, stated)


def _contrast(signed_gradient: np.ndarray, path: np.ndarray, noise: float) -> float:
    along = float(signed_gradient[path, np.arange(signed_gradient.shape[1])].mean())
    if along <= 0:
        return 0.0
    return along / noise if noise > 1e-9 else float("inf")


def detect_volume(volume: OCTVolume, config: GraphSearchConfig = GraphSearchConfig()) -> VolumeBoundaries:
    """:func:`detect_boundaries` on every B-scan of a volume, with its stated spacing (or the
    nominal one when :attr:`~retinassl.oct.volume.OCTVolume.spacing_stated` is False).

    Returns:
        :class:`VolumeBoundaries` (``(n_bscans, W)`` rows).
    """
    stated = volume.spacing_stated
    ax = lat = None
    if stated:
        ax, lat = volume.spacing_mm[1] * 1000.0, volume.spacing_mm[2] * 1000.0
    results = [detect_boundaries(b, ax, lat, config) for b in volume.bscans]
    return VolumeBoundaries(ilm=np.stack([r.ilm for r in results]), bm=np.stack([r.bm for r in results]),
                            quality=[r.quality for r in results], axial_um=results[0].axial_um,
                            lateral_um=results[0].lateral_um, spacing_stated=stated)

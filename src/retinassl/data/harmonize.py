"""Acquisition harmonisation: the pixel operations that make photographs from different cameras
arrive alike (all off by default in :class:`~retinassl.data.preprocess.PreprocessConfig`, applied
after the geometry by :func:`retinassl.data.preprocess.process_pixels`).

A resolution bottleneck and a common effective blur (:func:`normalize_resolution`), per-image colour
standardisation inside the FOV (:func:`standardize_color`) or matching to a reference's colour
statistics (:class:`ColorReference` from :func:`reference_statistics`; :func:`match_lab_statistics`,
Reinhard et al. 2001; :func:`match_histogram`), luminance CLAHE (:func:`apply_clahe`, LAB L or
YCrCb Y) and Graham's background subtraction (:func:`subtract_background`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, PositiveFloat, model_validator


class ColorReference(BaseModel):
    """Colour statistics of a reference image set inside the field of view, for
    ``PreprocessConfig.color_match`` (build one with :func:`reference_statistics`).

    Attributes:
        lab_mean: mean of the CIELAB channels (OpenCV's float conversion of RGB in [0, 1]: L in
            [0, 100], a and b in about [-128, 127]).
        lab_std: their standard deviations.
        quantiles: per channel (RGB, or one for grayscale), the intensity (0-255) at evenly spaced
            probabilities from 0 to 1 (at least 2 values, non-decreasing).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lab_mean: tuple[float, float, float]
    lab_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat]
    quantiles: tuple[tuple[float, ...], ...]

    @model_validator(mode="after")
    def _check_quantiles(self) -> ColorReference:
        for row in self.quantiles:
            if len(row) < 2 or any(b < a for a, b in zip(row, row[1:])):
                raise ValueError("each channel's quantiles need at least 2 non-decreasing values")
        return self


def apply_clahe(image: np.ndarray, clip: float = 2.0, space: str = "lab", tiles: int = 8) -> np.ndarray:
    """CLAHE on the luminance of an RGB uint8 image (or directly on a grayscale one).

    Args:
        image: ``(H, W, 3)`` RGB or ``(H, W)`` uint8.
        clip: clip limit.
        space: the luminance equalised: "lab" (CIELAB L) or "ycrcb" (YCrCb Y); the two colour
            channels of that space are kept, so hue and saturation stay as they were.
        tiles: tiles per side.
    """
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))
    if image.ndim == 2:
        return clahe.apply(image)
    forward, back = {"lab": (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB),
                     "ycrcb": (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB)}[space]
    converted = cv2.cvtColor(image, forward)
    converted[..., 0] = clahe.apply(np.ascontiguousarray(converted[..., 0]))
    return cv2.cvtColor(converted, back)


def subtract_background(image: np.ndarray, fov: np.ndarray, sigma: float) -> np.ndarray:
    """``4 * (image - local mean) + 128`` of a uint8 image, clipped to uint8 (Graham 2015).

    The local mean is a Gaussian average (``sigma`` pixels) over the FOV pixels only (normalised
    convolution), so the dark surround does not brighten a rim along the FOV border.
    """
    x = np.asarray(image, dtype=np.float32)
    weight = np.asarray(fov, dtype=np.float32)
    flat = x.ndim == 2
    if flat:
        x = x[..., None]
    total = cv2.GaussianBlur(x * weight[..., None], (0, 0), sigma).reshape(x.shape)
    share = cv2.GaussianBlur(weight, (0, 0), sigma)[..., None]
    local = total / np.maximum(share, 1e-6)
    out = np.clip(4.0 * (x - local) + 128.0, 0, 255).astype(np.uint8)
    return out[..., 0] if flat else out


def _fov_pixels(fov: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """The FOV as bool ``(H, W)``; the whole image when ``fov`` is None or empty."""
    if fov is None or not np.any(fov):
        return np.ones(shape, dtype=bool)
    return np.asarray(fov, dtype=bool)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _per_channel(value: float | tuple[float, ...], channels: int) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64).ravel()
    return np.broadcast_to(v if v.size > 1 else v[:1], (channels,)).astype(np.float64)


def fov_diameter(fov: np.ndarray) -> int:
    """The FOV's diameter in pixels: the longer side of its bounding box (0 when empty).

    A FOV cut by the image's top and bottom edges (IDRiD) keeps its full width, so this is the
    diameter of the fundus disc whichever edges cut it.
    """
    ys, xs = np.nonzero(fov)
    if len(xs) == 0:
        return 0
    return int(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))


def _blur_inside(image: np.ndarray, fov: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the FOV pixels that averages over FOV pixels only (normalised
    convolution), so the dark surround does not darken the rim; outside pixels unchanged."""
    x = np.asarray(image, dtype=np.float32)
    flat = x.ndim == 2
    if flat:
        x = x[..., None]
    weight = fov.astype(np.float32)
    total = cv2.GaussianBlur(x * weight[..., None], (0, 0), sigma).reshape(x.shape)
    share = cv2.GaussianBlur(weight, (0, 0), sigma)[..., None]
    out = np.where(fov[..., None], total / np.maximum(share, 1e-6), x)
    out = _to_uint8(out)
    return out[..., 0] if flat else out


def normalize_resolution(image: np.ndarray, fov: np.ndarray, scale: float,
                         resolution: int | None = None, sharpness: float = 0.0) -> np.ndarray:
    """Bring images from cameras of different resolution and sharpness to a common detail level.

    1. Resolution bottleneck: when the FOV was stored with more than ``resolution`` pixels across
       and the output shows it with more, the image is resampled so that the FOV diameter spans
       ``resolution`` pixels (area averaging) and back to its size (bilinear).
    2. Common blur: the image's own blur is modelled as its sampling footprint (output pixels per
       effective sample across the FOV, at least 1) / sqrt(12), the standard deviation of a box of
       that width; a Gaussian of ``sqrt(target^2 - own^2)`` pixels (target = ``sharpness`` x the
       FOV diameter) is applied inside the FOV, so every image ends with about the same blur.

    Args:
        image: ``(S, S[, C])`` uint8, the output of :func:`apply_geometry`.
        fov: ``(S, S)`` bool, its FOV.
        scale: output pixels per stored-image pixel (:attr:`Geometry.scale`).
        resolution: the bottleneck's FOV diameter in pixels (None: no bottleneck).
        sharpness: target blur sigma as a fraction of the FOV diameter (0: no blur).

    Returns:
        ``(S, S[, C])`` uint8.
    """
    size = image.shape[0]
    shown = fov_diameter(fov) or size  # FOV diameter in output pixels
    samples = shown / scale  # ... in stored pixels: the detail the image carries across the FOV
    out = image
    if resolution is not None and resolution < min(samples, shown):
        small = max(1, int(round(size * resolution / shown)))
        out = cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA)
        out = cv2.resize(out, (image.shape[1], size), interpolation=cv2.INTER_LINEAR)
        samples = resolution
    if sharpness > 0:
        footprint = max(1.0, shown / samples)
        extra = math.sqrt(max(0.0, (sharpness * shown) ** 2 - footprint ** 2 / 12.0))
        if extra > 0.05:  # a narrower Gaussian changes no uint8 value
            out = _blur_inside(out, _fov_pixels(fov, out.shape[:2]), extra)
    return out


def standardize_color(image: np.ndarray, fov: np.ndarray | None, mean: float | tuple[float, ...],
                      std: float | tuple[float, ...], gain: str = "channel") -> np.ndarray:
    """Per-image colour standardisation: each channel's mean inside the FOV mapped to ``mean`` and
    its spread scaled by one affine map per channel (applied to every pixel), rounded and clipped
    to uint8.

    ``gain="channel"``: each channel's standard deviation becomes ``std`` (a dim, noisy channel, the
    blue of a fundus photograph, is amplified most: by a median 5.8 and up to 25 times at std 40 on
    IDRiD, ``benchmarks/results/colour_clipping.md``). ``gain="common"``: one gain for every channel,
    ``std`` over the image's pooled standard deviation (the root mean square of the channels'), so
    the pooled spread becomes ``std`` and each channel keeps its contrast relative to the others
    (``std`` is then one value).

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` uint8.
        fov: ``(H, W)`` bool (None or empty: the whole image).
        mean, std: targets in uint8 units, one value or one per channel.
        gain: "channel" or "common".
    """
    x = np.asarray(image, dtype=np.float64)
    flat = x.ndim == 2
    if flat:
        x = x[..., None]
    inside = x[_fov_pixels(fov, x.shape[:2])]
    channels = x.shape[2]
    spread = inside.std(axis=0)
    if gain == "common":
        if len(set(np.ravel(std).tolist())) > 1:
            raise ValueError(f"a common gain takes one target std, got {std}")
        spread = np.full(channels, np.sqrt(np.mean(spread ** 2)))
    elif gain != "channel":
        raise ValueError(f"gain must be 'channel' or 'common', got {gain!r}")
    factor = _per_channel(std, channels) / np.maximum(spread, 1e-6)
    out = _to_uint8((x - inside.mean(axis=0)) * factor + _per_channel(mean, channels))
    return out[..., 0] if flat else out


def _lab(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> float32 CIELAB (L in [0, 100])."""
    return cv2.cvtColor(np.asarray(image, dtype=np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def match_lab_statistics(image: np.ndarray, fov: np.ndarray | None, reference: ColorReference) -> np.ndarray:
    """Colour transfer of Reinhard et al. 2001 ("Color transfer between images", IEEE CG&A): each
    channel of a decorrelated colour space shifted and scaled to the reference's mean and standard
    deviation (here CIELAB, statistics inside the FOV).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        fov: ``(H, W)`` bool (None or empty: the whole image).

    Returns:
        ``(H, W, 3)`` uint8 RGB (out-of-gamut colours clipped).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"LAB statistics matching needs (H, W, 3) RGB, got {image.shape}")
    lab = _lab(image).astype(np.float64)
    inside = lab[_fov_pixels(fov, lab.shape[:2])]
    gain = np.asarray(reference.lab_std) / np.maximum(inside.std(axis=0), 1e-6)
    matched = (lab - inside.mean(axis=0)) * gain + np.asarray(reference.lab_mean)
    return _to_uint8(cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0)


def match_histogram(image: np.ndarray, fov: np.ndarray | None,
                    quantiles: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Histogram matching of each channel inside the FOV to a reference given by its quantiles.

    Each intensity ``v`` of channel ``c`` goes to the reference's inverse distribution function
    at ``v``'s mid-rank inside the FOV (``P(X < v) + P(X = v) / 2``), linearly interpolated between
    the reference quantiles (at evenly spaced probabilities from 0 to 1). One lookup table per
    channel, applied to every pixel.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` uint8.
        fov: ``(H, W)`` bool (None or empty: the whole image).
        quantiles: ``C`` tuples of reference intensities (:attr:`ColorReference.quantiles`).
    """
    x = np.asarray(image, dtype=np.uint8)
    flat = x.ndim == 2
    if flat:
        x = x[..., None]
    if len(quantiles) != x.shape[2]:
        raise ValueError(f"{len(quantiles)} reference channel(s) for an image with {x.shape[2]}")
    inside = _fov_pixels(fov, x.shape[:2])
    out = np.empty_like(x)
    for c, reference in enumerate(quantiles):
        counts = np.bincount(x[..., c][inside], minlength=256).astype(np.float64)
        cdf = np.cumsum(counts) / counts.sum()
        rank = cdf - counts / (2 * counts.sum())
        probabilities = np.linspace(0.0, 1.0, len(reference))
        table = _to_uint8(np.interp(rank, probabilities, np.asarray(reference, dtype=np.float64)))
        out[..., c] = table[x[..., c]]
    return out[..., 0] if flat else out


def reference_statistics(images: Iterable[tuple[np.ndarray, np.ndarray | None]],
                         quantiles: int = 33) -> ColorReference:
    """The colour statistics of a reference image set, pooled over the FOV pixels of all images
    (each pixel counts once, so larger images weigh more): deterministic for the same images.

    Args:
        images: ``(image, fov)`` pairs: ``(H, W, 3)`` or ``(H, W)`` uint8 and ``(H, W)`` bool (or
            None for the whole image), e.g. cache entries' ``image()`` and ``fov()``.
        quantiles: number of evenly spaced probabilities (0 to 1) at which quantiles are kept.

    Raises:
        ValueError: no image, or images with different numbers of channels.
    """
    counts: np.ndarray | None = None
    lab_sum = np.zeros(3)
    lab_sq = np.zeros(3)
    n = 0
    for image, fov in images:
        x = np.asarray(image, dtype=np.uint8)
        if x.ndim == 2:
            x = x[..., None]
        inside = _fov_pixels(fov, x.shape[:2])
        hist = np.stack([np.bincount(x[..., c][inside], minlength=256) for c in range(x.shape[2])])
        if counts is not None and counts.shape != hist.shape:
            raise ValueError("reference images have different numbers of channels")
        counts = hist if counts is None else counts + hist
        rgb = x if x.shape[2] == 3 else np.repeat(x, 3, axis=2)
        lab = _lab(rgb)[inside].astype(np.float64)
        lab_sum += lab.sum(axis=0)
        lab_sq += (lab ** 2).sum(axis=0)
        n += len(lab)
    if counts is None or n == 0:
        raise ValueError("reference_statistics needs at least one image with FOV pixels")
    mean = lab_sum / n
    std = np.sqrt(np.maximum(lab_sq / n - mean ** 2, 1e-12))
    probabilities = np.linspace(0.0, 1.0, quantiles)
    values = np.arange(256, dtype=np.float64)
    rows = []
    for hist in counts.astype(np.float64):
        present = hist > 0
        rank = (np.cumsum(hist) - hist / 2) / hist.sum()
        # the extreme probabilities map to the darkest / brightest intensity present
        rank_x = np.concatenate([[0.0], rank[present], [1.0]])
        value_y = np.concatenate([[values[present][0]], values[present], [values[present][-1]]])
        rows.append(tuple(float(v) for v in np.interp(probabilities, rank_x, value_y)))
    return ColorReference(lab_mean=tuple(float(v) for v in mean),
                          lab_std=tuple(float(max(v, 1e-6)) for v in std), quantiles=tuple(rows))

"""Fundus preprocessing: field-of-view mask, crop to the fundus disc, square padding, resize, CLAHE,
and intensity normalisation.

The geometric part (crop, pad, resize) is computed once per image from its field of view (FOV) and
recorded as a :class:`Geometry`, so masks and other per-pixel annotations are mapped exactly like
their image. Masks are resized with "any-overlap" semantics (a target pixel is positive when any
source pixel under it is), so a one-pixel microaneurysm survives downsampling from 2144 to 512 px.

Normalisation is applied when an image is read for training (it is cheap), so the cache stores
compact uint8 arrays: "max" divides by the image's maximum intensity as in Lecouat et al. 2018
("We resized the original images to 1024x1024 and normalized them by the maximum intensity value
in each image").

Acquisition-robust options (all off by default; with them off the cached pixels are byte-identical to
those of earlier versions and the cache key is unchanged) make photographs from different cameras
arrive alike, in this order after the geometry (:func:`process_pixels`): a resolution bottleneck
and a common effective blur (:func:`normalize_resolution`), per-image colour standardisation inside
the FOV (:func:`standardize_color`) or matching to a reference's colour statistics
(:func:`match_lab_statistics`, Reinhard et al. 2001; :func:`match_histogram`), luminance CLAHE
(:func:`apply_clahe`, LAB L or YCrCb Y) and Graham's background subtraction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from retinassl.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class PreprocessConfig(BaseModel):
    """How an image becomes a network input.

    The options from ``clahe_space`` on make images from different cameras alike (all off by
    default; applied after the geometry in the order of :func:`process_pixels`).

    Attributes:
        size: side of the square output in pixels.
        crop_fov: crop to the bounding box of the field of view before padding and resizing.
        channels: 3 for colour fundus photographs, 1 for infrared/grayscale images.
        clahe: apply CLAHE to the luminance (LAB L channel) after resizing.
        clahe_clip: CLAHE clip limit.
        subtract_background: subtract the local background after resizing (Graham's 2015 Kaggle
            DR preprocessing, see :func:`subtract_background`): removes each eye's pigmentation and
            illumination, keeps small lesions and vessels.
        background_sigma: the background's Gaussian sigma as a fraction of ``size``.
        mask_outside_fov: set pixels outside the FOV to 0.
        normalize: "max" (divide by the image maximum), "imagenet" (ImageNet mean/std, for
            weights trained on ImageNet), "image" (per-image, per-channel z-score), "unit" ([0, 1]).
        fov_threshold: FOV = pixels whose brightest channel exceeds this fraction of the image's
            99th-percentile brightness (when the dataset has no FOV mask).
        clahe_space: where CLAHE equalises the luminance: "lab" (the L channel of CIELAB, as
            before this option existed) or "ycrcb" (the Y channel of YCrCb); colour channels are
            left alone either way.
        clahe_tiles: CLAHE tiles per side (8: as before).
        color_standardize: map each channel's mean and standard deviation inside the FOV to
            ``color_target_mean`` / ``color_target_std`` (:func:`standardize_color`).
        color_target_mean: target channel mean(s) in uint8 units (one value or one per channel).
        color_target_std: target channel standard deviation(s) in uint8 units.
        color_match: match the image's colour statistics inside the FOV to ``color_reference``:
            "lab" (mean and std of each CIELAB channel, Reinhard et al. 2001,
            :func:`match_lab_statistics`; colour images only), "histogram" (each channel's
            histogram, :func:`match_histogram`) or "none".
        color_reference: the reference statistics (fixed numbers, recorded with the model; build
            them from a reference image set with :func:`reference_statistics`).
        fov_resolution: a resolution bottleneck: the image is resampled so that its FOV diameter
            spans this many pixels (area averaging) and back to ``size``, so no camera brings more
            detail across the FOV than this (:func:`normalize_resolution`). Images stored with a
            smaller FOV diameter are left as they are: choose a value at or below the coarsest
            camera's. None: off.
        sharpness_sigma: a common effective blur, as a fraction of the FOV diameter: each image is
            blurred by the Gaussian that brings its own sampling blur (pixel footprint / sqrt(12))
            up to this sigma, so sharp and soft cameras end equally sharp. 0: off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(512, ge=8, le=8192)
    crop_fov: bool = True
    channels: Literal[1, 3] = 3
    clahe: bool = False
    clahe_clip: float = Field(2.0, gt=0)
    subtract_background: bool = False
    background_sigma: float = Field(1 / 30, gt=0, le=1)
    mask_outside_fov: bool = True
    normalize: Literal["max", "imagenet", "image", "unit"] = "max"
    fov_threshold: float = Field(0.08, gt=0, lt=1)
    clahe_space: Literal["lab", "ycrcb"] = "lab"
    clahe_tiles: int = Field(8, ge=1, le=64)
    color_standardize: bool = False
    color_target_mean: float | tuple[float, ...] = 128.0
    color_target_std: PositiveFloat | tuple[PositiveFloat, ...] = 40.0
    color_match: Literal["none", "lab", "histogram"] = "none"
    color_reference: ColorReference | None = None
    fov_resolution: int | None = Field(None, ge=8, le=8192)
    sharpness_sigma: float = Field(0.0, ge=0, le=0.1)

    @model_validator(mode="after")
    def _check_acquisition_options(self) -> PreprocessConfig:
        for name in ("color_target_mean", "color_target_std"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(value)}")
        if self.color_standardize and self.color_match != "none":
            raise ValueError("color_standardize and color_match both set the colour statistics: "
                             "choose one")
        if self.color_match != "none":
            if self.color_reference is None:
                raise ValueError(f"color_match {self.color_match!r} needs color_reference "
                                 f"(see retinassl.data.preprocess.reference_statistics)")
            if self.color_match == "lab" and self.channels != 3:
                raise ValueError("color_match 'lab' needs colour images (channels: 3); use "
                                 "'histogram' for grayscale")
            if self.color_match == "histogram" and len(self.color_reference.quantiles) != self.channels:
                raise ValueError(f"color_reference has quantiles for "
                                 f"{len(self.color_reference.quantiles)} channel(s), the images "
                                 f"have {self.channels}")
        return self

    def cache_key(self) -> str:
        """Hash of the fields that change the cached pixels (normalisation does not).

        An option that is off (and the settings that only matter when it is on) is left out of the
        key, so caches made before the option existed stay valid and equal pixels share entries.
        """
        fields = self.model_dump(exclude={"normalize"})
        if not self.subtract_background:  # keys of caches made before the option existed stay valid
            del fields["subtract_background"], fields["background_sigma"]
        unused: set[str] = set()
        if not self.clahe or self.clahe_space == "lab":
            unused.add("clahe_space")
        if not self.clahe or self.clahe_tiles == 8:
            unused.add("clahe_tiles")
        if not self.color_standardize:
            unused |= {"color_standardize", "color_target_mean", "color_target_std"}
        if self.color_match == "none":
            unused |= {"color_match", "color_reference"}
        if self.fov_resolution is None:
            unused.add("fov_resolution")
        if self.sharpness_sigma == 0:
            unused.add("sharpness_sigma")
        for name in unused:
            del fields[name]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Geometry:
    """Where the output square comes from in the stored image.

    The output is: crop ``box`` (x0, y0, x1, y1; stored-image pixels, x1/y1 exclusive) -> pad to a
    square of side ``side`` with the crop at offset (``pad_x``, ``pad_y``) -> resize to ``size``.
    """

    box: tuple[int, int, int, int]
    side: int
    pad_x: int
    pad_y: int
    size: int
    original_size: tuple[int, int]

    @property
    def scale(self) -> float:
        """Output pixels per stored-image pixel."""
        return self.size / self.side

    def to_output(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Map stored-image coordinates (pixels) to output coordinates."""
        ox = (np.asarray(x, dtype=float) - self.box[0] + self.pad_x) * self.scale
        oy = (np.asarray(y, dtype=float) - self.box[1] + self.pad_y) * self.scale
        return ox, oy

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Geometry:
        d = json.loads(text)
        return cls(box=tuple(d["box"]), side=d["side"], pad_x=d["pad_x"], pad_y=d["pad_y"],
                   size=d["size"], original_size=tuple(d["original_size"]))


def fov_mask(image: np.ndarray, threshold: float = 0.08) -> np.ndarray:
    """Estimate the circular field of view of a fundus photograph.

    Args:
        image: ``(H, W, 3)`` or ``(H, W)`` uint8.
        threshold: fraction of the 99th-percentile brightness above which a pixel is inside.

    Returns:
        ``(H, W)`` bool: the largest bright connected region, holes filled.
    """
    small_side = 256
    factor = max(1, min(image.shape[:2]) // small_side)
    view = image[::factor, ::factor]
    if view.ndim == 3:  # brightest channel (np.maximum is much faster than max(axis=2))
        view = np.maximum(np.maximum(view[..., 0], view[..., 1]), view[..., 2])
    small = np.ascontiguousarray(view, dtype=np.uint8)
    full_shape = image.shape[:2]
    level = float(np.percentile(small, 99))
    if level <= 0:
        return np.zeros(full_shape, dtype=bool)
    mask = (cv2.medianBlur(small, 3) > threshold * level).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros(full_shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    # fill the holes of the largest region by drawing its outer contour filled
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    mask = np.zeros_like(mask)
    cv2.drawContours(mask, contours, -1, 1, thickness=cv2.FILLED)
    full = cv2.resize(mask.astype(np.uint8), (full_shape[1], full_shape[0]),
                      interpolation=cv2.INTER_NEAREST)
    return full.astype(bool)


def compute_geometry(fov: np.ndarray, scale: float, original_size: tuple[int, int],
                     config: PreprocessConfig, path: object = None) -> Geometry:
    """Crop box and padding in stored-image coordinates from a FOV mask of the decoded image.

    Args:
        fov: ``(h, w)`` bool FOV of the image as decoded (possibly reduced by ``scale``).
        scale: decoded width / stored width.
        original_size: stored ``(width, height)``.
    """
    width, height = original_size
    if config.crop_fov:
        ys, xs = np.nonzero(fov)
        if len(xs) == 0:
            raise DataError("no field of view found (the image is black or nearly uniform)",
                            path=path)
        x0 = int(np.floor(xs.min() / scale))
        x1 = int(np.ceil((xs.max() + 1) / scale))
        y0 = int(np.floor(ys.min() / scale))
        y1 = int(np.ceil((ys.max() + 1) / scale))
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(width, x1), min(height, y1)
    else:
        x0, y0, x1, y1 = 0, 0, width, height
    w, h = x1 - x0, y1 - y0
    side = max(w, h)
    return Geometry(box=(x0, y0, x1, y1), side=side, pad_x=(side - w) // 2, pad_y=(side - h) // 2,
                    size=config.size, original_size=(width, height))


def apply_geometry(array: np.ndarray, geometry: Geometry, scale: float = 1.0,
                   is_mask: bool = False) -> np.ndarray:
    """Crop, pad and resize ``array`` (an image decoded at ``scale`` of the stored size, or a mask).

    Args:
        array: ``(H, W)`` or ``(H, W, C)``.
        scale: decoded width / stored width of ``array``.
        is_mask: resize with any-overlap semantics and return bool.

    Returns:
        ``(size, size[, C])`` uint8 (or bool for masks).
    """
    x0, y0, x1, y1 = (int(round(v * scale)) for v in geometry.box)
    crop = array[y0:y1, x0:x1]
    side = max(1, int(round(geometry.side * scale)))
    pad_x, pad_y = int(round(geometry.pad_x * scale)), int(round(geometry.pad_y * scale))
    canvas = np.zeros((side, side) + array.shape[2:], dtype=np.uint8 if not is_mask else np.float32)
    h, w = min(crop.shape[0], side - pad_y), min(crop.shape[1], side - pad_x)
    canvas[pad_y:pad_y + h, pad_x:pad_x + w] = crop[:h, :w]
    size = geometry.size
    if is_mask:
        if side == size:
            return canvas > 0
        interp = cv2.INTER_AREA if side > size else cv2.INTER_NEAREST
        return cv2.resize(canvas, (size, size), interpolation=interp) > 0
    if side == size:
        return canvas
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interp)


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
                      std: float | tuple[float, ...]) -> np.ndarray:
    """Per-image colour standardisation: each channel's mean and standard deviation inside the FOV
    mapped to ``mean`` / ``std`` by one affine map per channel (applied to every pixel), rounded
    and clipped to uint8.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` uint8.
        fov: ``(H, W)`` bool (None or empty: the whole image).
        mean, std: targets in uint8 units, one value or one per channel.
    """
    x = np.asarray(image, dtype=np.float64)
    flat = x.ndim == 2
    if flat:
        x = x[..., None]
    inside = x[_fov_pixels(fov, x.shape[:2])]
    channels = x.shape[2]
    gain = _per_channel(std, channels) / np.maximum(inside.std(axis=0), 1e-6)
    out = _to_uint8((x - inside.mean(axis=0)) * gain + _per_channel(mean, channels))
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


def process_pixels(image: np.ndarray, fov: np.ndarray, geometry: Geometry,
                   config: PreprocessConfig) -> np.ndarray:
    """The pixel operations of ``config`` after the geometry, in order: resolution and blur
    normalisation, colour standardisation or matching, CLAHE, background subtraction. With every
    option off this is the identity; masking outside the FOV is the caller's last step.

    Args:
        image: ``(S, S[, C])`` uint8 from :func:`apply_geometry`.
        fov: ``(S, S)`` bool, its FOV.
        geometry: the image's geometry (for the stored resolution).

    Returns:
        ``(S, S[, C])`` uint8.
    """
    out = image
    if config.fov_resolution is not None or config.sharpness_sigma > 0:
        out = normalize_resolution(out, fov, geometry.scale, config.fov_resolution,
                                   config.sharpness_sigma)
    if config.color_standardize:
        out = standardize_color(out, fov, config.color_target_mean, config.color_target_std)
    if config.color_match == "lab":
        out = match_lab_statistics(out, fov, config.color_reference)
    elif config.color_match == "histogram":
        out = match_histogram(out, fov, config.color_reference.quantiles)
    if config.clahe:
        out = apply_clahe(out, config.clahe_clip, config.clahe_space, config.clahe_tiles)
    if config.subtract_background:
        out = subtract_background(out, fov, config.background_sigma * config.size)
    return out


def normalize(image: np.ndarray, mode: str, stats: dict | None = None) -> np.ndarray:
    """uint8 ``(H, W[, C])`` -> float32 ``(C, H, W)`` network input.

    "max": divided by the image maximum (Lecouat et al. 2018); "imagenet": ImageNet mean/std;
    "image": per-image per-channel zero mean, unit variance (inside the FOV); "unit": divided by
    255. ``stats`` (a cache entry's :attr:`~retinassl.data.cache.CacheEntry.stats`) supplies the
    whole image's maximum/mean/std when ``image`` is only a patch of it.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    x = np.transpose(x, (2, 0, 1))
    if mode == "max":
        peak = float(stats["max"]) if stats else float(x.max())
        return x / peak if peak > 0 else x
    if mode == "unit":
        return x / 255.0
    if mode == "imagenet":
        if x.shape[0] != 3:
            raise ValueError("imagenet normalisation needs 3 channels")
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
        return (x / 255.0 - mean) / std
    if mode == "image":
        if stats:
            mean = np.asarray(stats["mean"], dtype=np.float32)[:, None, None]
            std = np.asarray(stats["std"], dtype=np.float32)[:, None, None]
        else:
            mean = x.mean(axis=(1, 2), keepdims=True)
            std = x.std(axis=(1, 2), keepdims=True)
        return (x - mean) / np.maximum(std, 1e-6)
    raise ValueError(f"unknown normalisation {mode!r}")

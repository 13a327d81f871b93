"""Fundus preprocessing: how an image becomes a cached input (:class:`PreprocessConfig`), and the
intensity normalisation applied when it is read (:func:`normalize`).

The geometric part (crop to the fundus disc, square padding, resize) is computed once per image
from its field of view by :func:`compute_geometry` and recorded as a
:class:`~retinassl.data.field_of_view.Geometry`, so masks and other per-pixel annotations are mapped
exactly like their image (:mod:`retinassl.data.field_of_view`).

Normalisation is applied when an image is read for training (it is cheap), so the cache stores
compact uint8 arrays: "max" divides by the image's maximum intensity as in Lecouat et al. 2018
("We resized the original images to 1024x1024 and normalized them by the maximum intensity value
in each image").

Acquisition-robust options (all off by default; with them off the cached pixels are byte-identical to
those of earlier versions and the cache key is unchanged) make photographs from different cameras
arrive alike; :func:`process_pixels` applies them after the geometry, in the order of
:mod:`retinassl.data.harmonize` (resolution and blur, colour, CLAHE, background subtraction).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from retinassl.data.field_of_view import Geometry
from retinassl.data.harmonize import (ColorReference, apply_clahe, match_histogram, match_lab_statistics,
                                      normalize_resolution, standardize_color, subtract_background)
from retinassl.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
            weights trained on ImageNet), "image" (per-image, per-channel z-score), "unit" ([0, 1]),
            "meanstd" (``(x / 255 - normalize_mean) / normalize_std``: the constants a published
            model was trained with, e.g. 0.5 / 0.5 for RETFound-Green).
        normalize_mean: with "meanstd": per-channel means of [0, 1] intensities (one value or
            one per channel); unset otherwise.
        normalize_std: with "meanstd": per-channel standard deviations (one value or one per
            channel); unset otherwise.
        fov_threshold: FOV = pixels whose brightest channel exceeds this fraction of the image's
            99th-percentile brightness (when the dataset has no FOV mask).
        fov_background: also require FOV pixels to be brighter than the background read in the
            image's corners (:func:`~retinassl.data.field_of_view.corner_background`), for cameras
            whose area outside the FOV is not black (STARE); images with black corners are
            unchanged.
        clahe_space: where CLAHE equalises the luminance: "lab" (the L channel of CIELAB, as
            before this option existed) or "ycrcb" (the Y channel of YCrCb); colour channels are
            left alone either way.
        clahe_tiles: CLAHE tiles per side (8: as before).
        color_standardize: map each channel's mean and standard deviation inside the FOV to
            ``color_target_mean`` / ``color_target_std`` (:func:`standardize_color`).
        color_target_mean: target channel mean(s) in uint8 units (one value or one per channel).
        color_target_std: target channel standard deviation(s) in uint8 units.
        color_gain: "channel" (each channel's standard deviation becomes the target: a dim channel's
            noise is amplified with it) or "common" (one gain for all channels, from their pooled
            standard deviation; one target value), see :func:`standardize_color`.
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
    normalize: Literal["max", "imagenet", "image", "unit", "meanstd"] = "max"
    normalize_mean: tuple[float, ...] | None = None
    normalize_std: tuple[PositiveFloat, ...] | None = None
    fov_threshold: float = Field(0.08, gt=0, lt=1)
    fov_background: bool = False
    clahe_space: Literal["lab", "ycrcb"] = "lab"
    clahe_tiles: int = Field(8, ge=1, le=64)
    color_standardize: bool = False
    color_target_mean: float | tuple[float, ...] = 128.0
    color_target_std: PositiveFloat | tuple[PositiveFloat, ...] = 40.0
    color_gain: Literal["channel", "common"] = "channel"
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
        constants = (self.normalize_mean, self.normalize_std)
        if self.normalize == "meanstd":
            for name, value in zip(("normalize_mean", "normalize_std"), constants):
                if value is None or len(value) not in (1, self.channels):
                    raise ValueError(f"normalize 'meanstd' needs {name} with 1 or {self.channels} "
                                     f"values, got {value}")
        elif constants != (None, None):
            raise ValueError(f"normalize_mean / normalize_std are used only with normalize "
                             f"'meanstd' (normalize is {self.normalize!r})")
        if self.color_standardize and self.color_gain == "common" and isinstance(self.color_target_std, tuple) \
                and len(set(self.color_target_std)) > 1:
            raise ValueError(f"color_gain 'common' scales every channel by one gain: give one "
                             f"color_target_std, got {self.color_target_std}")
        if self.color_standardize and self.color_match != "none":
            raise ValueError("color_standardize and color_match both set the colour statistics: "
                             "choose one")
        if self.color_match != "none":
            if self.color_reference is None:
                raise ValueError(f"color_match {self.color_match!r} needs color_reference "
                                 f"(see retinassl.data.harmonize.reference_statistics)")
            if self.color_match == "lab" and self.channels != 3:
                raise ValueError("color_match 'lab' needs colour images (channels: 3); use "
                                 "'histogram' for grayscale")
            if self.color_match == "histogram" and len(self.color_reference.quantiles) != self.channels:
                raise ValueError(f"color_reference has quantiles for "
                                 f"{len(self.color_reference.quantiles)} channel(s), the images "
                                 f"have {self.channels}")
        return self

    def inactive_fields(self) -> set[str]:
        """The options that are off, with the settings that only matter when their option is on
        (CLAHE's tiles with CLAHE off, ...), and settings left out at the value they had before they
        were options (CLAHE in CIELAB with 8 tiles), which leaving them out means."""
        unused: set[str] = set()
        if not self.subtract_background:
            unused |= {"subtract_background", "background_sigma"}
        if not self.clahe or self.clahe_space == "lab":
            unused.add("clahe_space")
        if not self.clahe or self.clahe_tiles == 8:
            unused.add("clahe_tiles")
        if not self.clahe:
            unused.add("clahe_clip")
        if not self.color_standardize:
            unused |= {"color_standardize", "color_target_mean", "color_target_std"}
        if not self.color_standardize or self.color_gain == "channel" or self.channels == 1:
            unused.add("color_gain")  # one channel: both gains are the same map
        if self.color_match == "none":
            unused |= {"color_match", "color_reference"}
        if not self.fov_background:
            unused.add("fov_background")
        if self.fov_resolution is None:
            unused.add("fov_resolution")
        if self.sharpness_sigma == 0:
            unused.add("sharpness_sigma")
        return unused

    def cache_key(self) -> str:
        """Hash of the fields that change the cached pixels (normalisation does not).

        An option that is off (and the settings that only matter when it is on) is left out of the
        key, so caches made before the option existed stay valid and equal pixels share entries.
        """
        fields = self.model_dump(exclude={"normalize", "normalize_mean", "normalize_std"})
        for name in self.inactive_fields() - {"clahe_clip"}:  # CLAHE's clip was always keyed
            del fields[name]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def input_signature(self) -> dict[str, object]:
        """What the network sees besides the size, in one spelling: the active options (see
        :meth:`inactive_fields`), one value per channel where one value stands for all, and the
        normalisation as the constants it applies ("imagenet" is "meanstd" with ImageNet's). Two
        configs with equal signatures give the same inputs at equal sizes."""
        fields = self.model_dump(mode="json", exclude={"size", *self.inactive_fields()})

        def per_channel(value: object) -> object:
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            return values * self.channels if len(values) == 1 else values

        for name in ("color_target_mean", "color_target_std"):
            if name in fields:
                fields[name] = per_channel(fields[name])
        if self.normalize == "imagenet":
            fields.update(normalize="meanstd", normalize_mean=list(IMAGENET_MEAN), normalize_std=list(IMAGENET_STD))
        for name in ("normalize_mean", "normalize_std"):
            if fields[name] is not None:
                fields[name] = per_channel(fields[name])
        return fields

    def normalization(self) -> Normalization:
        """The intensity normalisation, as :func:`normalize` takes it."""
        return Normalization(self.normalize, self.normalize_mean, self.normalize_std)


@dataclass(frozen=True)
class Normalization:
    """A :func:`normalize` mode with its constants (``mean``/``std`` for "meanstd" only)."""

    mode: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


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
        out = standardize_color(out, fov, config.color_target_mean, config.color_target_std,
                                config.color_gain)
    if config.color_match == "lab":
        out = match_lab_statistics(out, fov, config.color_reference)
    elif config.color_match == "histogram":
        out = match_histogram(out, fov, config.color_reference.quantiles)
    if config.clahe:
        out = apply_clahe(out, config.clahe_clip, config.clahe_space, config.clahe_tiles)
    if config.subtract_background:
        out = subtract_background(out, fov, config.background_sigma * config.size)
    return out


def normalize(image: np.ndarray, mode: str | Normalization, stats: dict | None = None) -> np.ndarray:
    """uint8 ``(H, W[, C])`` -> float32 ``(C, H, W)`` network input.

    "max": divided by the image maximum (Lecouat et al. 2018); "imagenet": ImageNet mean/std;
    "image": per-image per-channel zero mean, unit variance (inside the FOV); "unit": divided by
    255; "meanstd" (a :class:`Normalization` with its constants): ``(x / 255 - mean) / std``.
    ``stats`` (a cache entry's :attr:`~retinassl.data.cache_entry.CacheEntry.stats`) supplies the
    whole image's maximum/mean/std when ``image`` is only a patch of it.
    """
    spec = mode if isinstance(mode, Normalization) else Normalization(mode)
    mode = spec.mode
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    x = np.transpose(x, (2, 0, 1))
    if mode == "max":
        peak = float(stats["max"]) if stats else float(x.max())
        return x / peak if peak > 0 else x
    if mode == "unit":
        return x / 255.0
    if mode in ("imagenet", "meanstd"):
        if mode == "imagenet":
            if x.shape[0] != 3:
                raise ValueError("imagenet normalisation needs 3 channels")
            spec = Normalization(mode, IMAGENET_MEAN, IMAGENET_STD)
        if spec.mean is None or spec.std is None or {len(spec.mean), len(spec.std)} - {1, x.shape[0]}:
            raise ValueError(f"'meanstd' normalisation needs 1 or {x.shape[0]} means and standard "
                             f"deviations, got {spec.mean} and {spec.std}")
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
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

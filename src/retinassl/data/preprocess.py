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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PreprocessConfig(BaseModel):
    """How an image becomes a network input.

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

    def cache_key(self) -> str:
        """Hash of the fields that change the cached pixels (normalisation does not)."""
        fields = self.model_dump(exclude={"normalize"})
        if not self.subtract_background:  # keys of caches made before the option existed stay valid
            del fields["subtract_background"], fields["background_sigma"]
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


def apply_clahe(image: np.ndarray, clip: float = 2.0) -> np.ndarray:
    """CLAHE on the luminance of an RGB uint8 image (or directly on a grayscale one)."""
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8))
    if image.ndim == 2:
        return clahe.apply(image)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = clahe.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


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

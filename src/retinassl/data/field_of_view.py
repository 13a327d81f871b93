"""The field of view (FOV) of a fundus photograph and the geometry that maps it to the output square.

:func:`fov_mask` finds the circular FOV; a :class:`Geometry` (computed once per image from its FOV
by :func:`retinassl.data.preprocess.compute_geometry`) records the crop to the fundus disc, the
square padding and the resize, and :func:`apply_geometry` applies it to the image and, exactly
alike, to its masks. Masks are resized with "any-overlap" semantics (a target pixel is positive when
any source pixel under it is), so a one-pixel microaneurysm survives downsampling from 2144 to
512 px.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np


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


def fov_mask(image: np.ndarray, threshold: float = 0.08, background: bool = False) -> np.ndarray:
    """Estimate the circular field of view of a fundus photograph.

    Args:
        image: ``(H, W, 3)`` or ``(H, W)`` uint8.
        threshold: fraction of the 99th-percentile brightness above which a pixel is inside.
        background: also require a pixel to be brighter than the image's background, read in its
            four corners (:func:`corner_background`): for cameras whose area outside the field of
            view is not black (STARE's is 15-45 grey levels, above 8 % of the brightest).

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
    smooth = cv2.medianBlur(small, 3)
    cut = threshold * level
    if background:
        cut = max(cut, corner_background(smooth, cut))
    mask = (smooth > cut).astype(np.uint8)
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


def corner_background(brightness: np.ndarray, cut: float, corner: float = 1 / 20) -> float:
    """The background level of a fundus photograph: the brightest pixel of its four corner squares
    (side ``corner`` of the shorter side), which lie outside the circular field of view in
    photographs that show all of it.

    Corners that are not dark (their brightest pixel at least half the median brightness of the
    central square, half the image's side, which is retina in any fundus photograph) are taken to
    be retina, as in a photograph cropped inside its field of view; ``cut`` is then returned
    unchanged, as it is when the corners are darker than ``cut`` already.

    Args:
        brightness: ``(H, W)`` uint8, the brightest channel (median-filtered against noise).
        cut: the threshold in use.
    """
    side = max(2, int(min(brightness.shape) * corner))
    corners = (brightness[:side, :side], brightness[:side, -side:], brightness[-side:, :side],
               brightness[-side:, -side:])
    corner_max = max(float(c.max()) for c in corners)
    h, w = brightness.shape
    centre = brightness[h // 4:h - h // 4, w // 4:w - w // 4]
    if corner_max <= cut or corner_max >= 0.5 * float(np.median(centre)):
        return cut
    return corner_max


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

"""Patch-score heatmaps overlaid on the fundus image.

Lecouat et al. 2018: "we overlaid the localized patch-level abnormality scores spatially onto the
image; and smoothed the resulting visualization with a Gaussian blur."
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from PIL import Image

from retinassl.atomic import atomic_path
from retinassl.data.patches import patch_values_to_image


HEAT_ALPHA = 0.45      # a patch heatmap's opacity at value 1
SIGMA_FRACTION = 0.03  # its Gaussian blur, as a fraction of the image side


def overlay(image: np.ndarray, patch_probs: np.ndarray, sigma_fraction: float = SIGMA_FRACTION,
            alpha: float = HEAT_ALPHA, mask: np.ndarray | None = None, cmap: str = "inferno") -> np.ndarray:
    """Blend a smoothed patch heatmap onto an image.

    Args:
        image: ``(H, W, 3)`` uint8 (or ``(H, W)``).
        patch_probs: ``(grid, grid)`` values in [0, 1] (e.g. sigmoid of patch logits).
        sigma_fraction: Gaussian blur sigma as a fraction of the image side.
        alpha: heatmap opacity at value 1 (scaled by the value, so healthy areas stay visible).
        mask: optional ``(H, W)`` bool ground-truth lesion mask, outlined in cyan.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    h, w = image.shape[:2]
    heat = patch_values_to_image(np.asarray(patch_probs), h, w, sigma=sigma_fraction * h)
    return blend(image, heat, alpha, mask, cmap)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA, mask: np.ndarray | None = None,
          cmap: str = "inferno", rows: int = 256) -> np.ndarray:
    """Blend a heat map (clipped to [0, 1]) onto an image of the same height and width.

    Args:
        image: ``(H, W, 3)`` uint8 (or ``(H, W)``).
        heat: ``(H, W)`` values; colour ``cmap``, opacity ``alpha * value``.
        mask: optional ``(H, W)`` bool lesion mask, outlined in cyan.
        rows: image rows blended at a time (a photograph at its original size, e.g. 4288 x 2848,
            stays within a few tens of MB).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match the image {rgb.shape[:2]}")
    out = np.empty(rgb.shape, dtype=np.uint8)
    for y in range(0, rgb.shape[0], rows):
        part = heat[y:y + rows]
        colours = (colormaps[cmap](part)[..., :3] * 255).astype(np.float32)
        weight = (alpha * part)[..., None]
        out[y:y + rows] = (rgb[y:y + rows].astype(np.float32) * (1 - weight) + colours * weight).clip(0, 255)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 255), 1)
    return out


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 image as PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path

"""Regular patch grids: cutting images into patches, patch labels from masks, and mapping patch
values back onto the image.

The patch-based SSL-GAN of Lecouat et al. 2018 cuts each image into "non-overlapping 128x128 patches
based on a uniform 8x8 grid" and labels "patches with 0 pixels overlapping the mask as healthy; and
... patches with at least 1 overlapping pixel as diseased". Patches are ordered row-major: patch
``j = row * grid + col``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from retinassl.errors import DataError


def _check(height: int, width: int, grid: int) -> tuple[int, int]:
    if grid < 1 or height % grid or width % grid:
        raise DataError(f"a {height}x{width} image cannot be cut into a {grid}x{grid} grid of equal "
                        f"patches; choose a size divisible by {grid}")
    return height // grid, width // grid


def patch_boxes(height: int, width: int, grid: int) -> np.ndarray:
    """``(grid*grid, 4)`` int boxes ``(y0, x0, y1, x1)`` in row-major order."""
    ph, pw = _check(height, width, grid)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    y0, x0 = rows.ravel() * ph, cols.ravel() * pw
    return np.stack([y0, x0, y0 + ph, x0 + pw], axis=1)


def to_patches(images: torch.Tensor, grid: int) -> torch.Tensor:
    """Cut ``(B, C, H, W)`` images into ``(B * grid * grid, C, H/grid, W/grid)`` patches.

    Patches of image ``b`` occupy rows ``b*grid*grid ... (b+1)*grid*grid - 1``, row-major.
    """
    b, c, h, w = images.shape
    ph, pw = _check(h, w, grid)
    x = images.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * grid * grid, c, ph, pw)


def from_patches(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`: ``(B * grid * grid, C, ph, pw)`` -> ``(B, C, H, W)``."""
    n, c, ph, pw = patches.shape
    if n % (grid * grid):
        raise ValueError(f"{n} patches is not a multiple of {grid * grid}")
    b = n // (grid * grid)
    x = patches.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid * ph, grid * pw)


def patch_pixel_counts(mask: np.ndarray, grid: int) -> np.ndarray:
    """``(grid, grid)`` number of foreground pixels of a ``(H, W)`` mask in each patch."""
    h, w = mask.shape
    ph, pw = _check(h, w, grid)
    return np.asarray(mask, dtype=bool).reshape(grid, ph, grid, pw).sum(axis=(1, 3))


def patch_labels(mask: np.ndarray, grid: int, min_pixels: int = 1) -> np.ndarray:
    """``(grid, grid)`` bool: a patch is positive when at least ``min_pixels`` mask pixels fall in it."""
    return patch_pixel_counts(mask, grid) >= min_pixels


def patch_values_to_image(values: np.ndarray, height: int, width: int,
                          sigma: float | None = None) -> np.ndarray:
    """Spread ``(grid, grid)`` patch values over an ``(H, W)`` image (each patch filled with its
    value), optionally smoothed with a Gaussian of ``sigma`` pixels (the SSL-GAN paper's overlay).
    """
    values = np.asarray(values, dtype=np.float32)
    grid = values.shape[0]
    ph, pw = _check(height, width, grid)
    image = np.repeat(np.repeat(values, ph, axis=0), pw, axis=1)
    if sigma:
        image = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
    return image

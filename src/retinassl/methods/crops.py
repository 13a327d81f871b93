"""Batched crops for pretext tasks: square patches cut at sub-pixel positions and resized in one
bilinear resampling, and the inscribed-circle mask that gives every rotation of a fundus image the
same outline.

Coordinates are in pixels of the input with edges at integers: pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)``, so the image centre of an ``H x W`` image is ``(W / 2, H / 2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_patches(x: torch.Tensor, centres: torch.Tensor, side: float, out_size: int) -> torch.Tensor:
    """Square crops of side ``side`` pixels centred at ``centres``, resized to ``out_size``.

    Args:
        x: images ``(B, C, H, W)``.
        centres: ``(B, 2)`` crop centres as ``(x, y)`` in pixels (need not be integers).
        side: crop side in input pixels.
        out_size: side of the returned patches.

    Returns:
        ``(B, C, out_size, out_size)``; parts of a crop outside the image are zero.
    """
    b, c, h, w = x.shape
    centres = centres.to(torch.float32)
    zero = torch.zeros(b)
    theta = torch.stack([
        torch.stack([torch.full((b,), side / w), zero, 2 * centres[:, 0] / w - 1], 1),
        torch.stack([zero, torch.full((b,), side / h), 2 * centres[:, 1] / h - 1], 1)], 1)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [b, c, out_size, out_size],
                         align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_centres(batch: int, height: int, width: int, margin: float,
                   generator: torch.Generator) -> torch.Tensor:
    """``(B, 2)`` points ``(x, y)`` uniform in the image shrunk by ``margin`` pixels on every side.

    Raises:
        ValueError: the margins leave no room (``2 * margin > min(height, width)``).
    """
    if 2 * margin > min(height, width):
        raise ValueError(f"a margin of {margin:.1f} pixels leaves no room in a {height}x{width} image")
    low = torch.tensor([margin, margin])
    high = torch.tensor([width - margin, height - margin])
    return low + (high - low) * torch.rand(batch, 2, generator=generator)


def inscribed_circle(height: int, width: int, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(1, 1, H, W)`` mask: 1 where the pixel centre lies inside the largest centred circle.

    Preprocessed fundus images are square with the field of view cropped and padded, so its
    outline (a disc with flat cuts where the camera clipped it) tells a 0-degree from a 90-degree
    rotation; multiplying by this mask removes that give-away.
    """
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2
    radius = min(height, width) / 2
    inside = (ys[:, None] ** 2 + xs[None, :] ** 2) <= radius ** 2
    return inside.to(dtype)[None, None]

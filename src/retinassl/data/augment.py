"""Batched, seeded augmentations on tensors (run inside a method's loss with the engine's generator).

All functions take ``(B, C, H, W)`` float tensors and a ``torch.Generator`` (on the CPU); random
parameters are drawn per sample from the generator, so the same generator state gives the same
augmented batch. Geometric transforms suit fundus images: any rotation and flip is plausible (left
and right eyes are mirror images), small scale changes mimic field-of-view differences; colour
changes mimic camera and illumination differences.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations per sample."""
    codes = torch.randint(0, 8, (x.shape[0],), generator=generator).tolist()
    out = []
    for sample, code in zip(x, codes):
        if code & 4:
            sample = sample.flip(-1)
        out.append(torch.rot90(sample, code % 4, dims=(-2, -1)))
    return torch.stack(out)


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 180.0,
                  scale: tuple[float, float] = (0.9, 1.1), translate: float = 0.05,
                  hflip: bool = True) -> torch.Tensor:
    """Random rotation (+-``degrees``), isotropic scale, translation (fraction of the side) and
    horizontal flip per sample, in one bilinear resampling (zeros outside)."""
    b = x.shape[0]
    angle = _uniform(b, -degrees, degrees, generator) * math.pi / 180
    s = _uniform(b, scale[0], scale[1], generator)
    tx = _uniform(b, -translate, translate, generator) * 2
    ty = _uniform(b, -translate, translate, generator) * 2
    flip = (torch.rand(b, generator=generator) < 0.5) if hflip else torch.zeros(b, dtype=torch.bool)
    sign = torch.where(flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos * sign, -sin, tx], 1), torch.stack([sin * sign, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator,
                        scale: tuple[float, float] = (0.4, 1.0)) -> torch.Tensor:
    """SimCLR's crop: a random square of ``scale`` of the area, resized back to the input size."""
    b, _, h, w = x.shape
    side = torch.sqrt(_uniform(b, scale[0], scale[1], generator))
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - side)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - side)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([side, zero, cx], 1), torch.stack([zero, side, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, generator: torch.Generator, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in ``[1 - v, 1 + v]`` per sample."""
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    fb = _uniform(b, 1 - brightness, 1 + brightness, generator).view(shape).to(x)
    fc = _uniform(b, 1 - contrast, 1 + contrast, generator).view(shape).to(x)
    fs = _uniform(b, 1 - saturation, 1 + saturation, generator).view(shape).to(x)
    x = x * fb
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * fc + mean
    if x.shape[1] == 3:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * fs + gray
    return x


def channel_gain(x: torch.Tensor, generator: torch.Generator,
                 spread: float | tuple[float, ...]) -> torch.Tensor:
    """Each channel of each sample multiplied by ``exp(u)``, ``u`` uniform in ``[-s_c, s_c]``.

    A colour cast: fundus cameras, pigmentation and lens yellowing scale the channels by
    different factors from eye to eye. ``spread`` is one log-range for all channels or one per
    channel; meant for non-negative intensities (``max`` or ``unit`` normalisation). All spreads 0:
    ``x`` unchanged, and nothing is drawn from ``generator``.
    """
    b, c = x.shape[:2]
    spreads = torch.as_tensor(spread, dtype=torch.float32).flatten()
    if not bool((spreads != 0).any()):
        return x
    if bool((spreads < 0).any()):
        raise ValueError(f"channel_gain: spreads must be >= 0, got {spread}")
    if spreads.numel() == 1:
        spreads = spreads.expand(c)
    if spreads.numel() != c:
        raise ValueError(f"channel_gain: {spreads.numel()} spreads for {c} channels")
    u = torch.rand((b, c), generator=generator) * 2 - 1
    return x * torch.exp(u * spreads).view(b, c, 1, 1).to(x)


def gaussian_blur(x: torch.Tensor, generator: torch.Generator, sigma: tuple[float, float] = (0.1, 2.0),
                  probability: float = 0.5) -> torch.Tensor:
    """Blur a random subset of the batch with a random sigma (separable 2-D Gaussian)."""
    b, c, h, w = x.shape
    apply = torch.rand(b, generator=generator) < probability
    sigmas = _uniform(b, sigma[0], sigma[1], generator)
    out = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        s = float(sigmas[i])
        radius = max(1, int(math.ceil(2 * s)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t ** 2) / (2 * s * s))
        k = k / k.sum()
        img = out[i:i + 1]
        img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"),
                       k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"),
                       k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        out[i:i + 1] = img
    return out


def random_grayscale(x: torch.Tensor, generator: torch.Generator, probability: float = 0.2) -> torch.Tensor:
    """Replace a random subset of 3-channel images by their luma (ITU-R 601), kept in 3 channels."""
    apply = (torch.rand(x.shape[0], generator=generator) < probability).to(x.device)
    if x.shape[1] != 3 or not bool(apply.any()):
        return x
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return torch.where(apply[:, None, None, None], gray, x)

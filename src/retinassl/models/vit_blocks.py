"""The building blocks of :class:`~retinassl.models.vit.VisionTransformer` (and of MAE's decoder), with
timm's parameter names: patch embedding, multi-head self-attention
(:func:`torch.nn.functional.scaled_dot_product_attention`), MLP, layer scale (Touvron et al. 2021),
stochastic depth (:class:`DropPath`) and the pre-norm :class:`Block` (``x + attn(norm1(x))`` then
``x + mlp(norm2(x))``); the bicubic resampling of a position embedding to another patch grid, and
MAE's per-sample random masking of patch tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retinassl.errors import ConfigError


LN_EPS = 1e-6  # timm, MAE, DINOv2 and RETFound all use LayerNorm(eps=1e-6)


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
                       num_prefix_tokens: int = 0) -> torch.Tensor:
    """Resample a ViT position embedding to another patch grid (bicubic, antialiased).

    Args:
        pos_embed: ``(1, num_prefix_tokens + gh * gw, D)``.
        new_grid: ``(gh', gw')``, the grid to resample to.
        old_grid: ``(gh, gw)``; None: square, ``sqrt`` of the number of grid tokens.
        num_prefix_tokens: leading tokens (a class token's position) kept as they are.

    Returns:
        ``(1, num_prefix_tokens + gh' * gw', D)`` in ``pos_embed``'s dtype; the input itself when the
        grid does not change.

    Raises:
        ValueError: the grid tokens do not form ``old_grid``.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"a position embedding of {n} grid tokens is not a square grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"a position embedding of {n} grid tokens is not a {old_grid[0]}x{old_grid[1]} grid")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    image = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def random_masking(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking (He et al. 2022: "we sample random patches without replacement,
    following a uniform distribution").

    Args:
        batch, num_patches: ``B`` and ``N`` (the patch grid's size).
        mask_ratio: fraction of patches hidden (0.75 in MAE); ``round(N * (1 - ratio))`` are kept,
            at least one.
        generator: the source of randomness (CPU generator; the indices are moved to ``device``).

    Returns:
        ``(keep, mask, restore)``: ``keep`` ``(B, n_keep)`` long indices of the visible patches (for
        :meth:`~retinassl.models.vit.VisionTransformer.tokens`), ``mask`` ``(B, N)`` float
        (1 = hidden), ``restore`` ``(B, N)`` long: the permutation that puts
        ``[visible..., hidden...]`` back in grid order.
    """
    if not 0 <= mask_ratio < 1:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(1, int(round(num_patches * (1 - mask_ratio))))
    noise = torch.rand(batch, num_patches, generator=generator)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(batch, num_patches)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, restore)
    return shuffle[:, :n_keep].to(device), mask.to(device), restore.to(device)


class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` -> ``(B, (H//p) * (W//p), D)`` by a ``p x p`` stride-``p`` convolution (``proj``)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: ``(B, N, D)`` -> ``(B, N, D)``; one ``qkv`` projection, ``proj`` out."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc1`` -> GELU (exact) -> ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma`` (CaiT), initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a sample's whole residual branch with
    probability ``p`` and rescale the kept ones by ``1 / (1 - p)``. Like dropout it draws from the
    global RNG, which the engine reseeds per batch."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 layer_scale: float | None, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

"""Vision transformers with timm's parameter names, so published checkpoints load without renaming.

Dosovitskiy et al. 2021 (ViT): "we reshape the image x in R^{H x W x C} into a sequence of flattened
2D patches ... we prepend a learnable embedding to the sequence of embedded patches (z_0^0 =
x_class) ... Position embeddings are added to the patch embeddings to retain positional
information." Each block is pre-norm: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, and a
final LayerNorm follows the last block.

Options from later work, as timm's ``VisionTransformer`` names them:

- layer scale (Touvron et al. 2021, CaiT; used by DINOv2 and RETFound-Green): each residual branch is
  multiplied by a learned per-channel ``ls1.gamma`` / ``ls2.gamma`` (``layer_scale`` = initial value;
  None switches it off, as in the original ViT and MAE);
- register tokens (Darcet et al. 2024, "Vision transformers need registers"): ``reg_token`` holds
  ``num_register_tokens`` extra learned tokens after the class token; they carry no position
  embedding and are dropped from every output;
- ``no_embed_class`` (timm): the position embedding covers only the patch tokens (the class token
  has none of its own). timm's register-token models (DINOv2-reg, RETFound-Green) use it, so it
  defaults to ``num_register_tokens > 0``.

Parameter names are exactly timm's: ``cls_token``, ``reg_token``, ``pos_embed``,
``patch_embed.proj.{weight,bias}``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
mlp.fc2, ls2.gamma}``, ``norm`` and (``fc_norm=True``) ``fc_norm``. Loading other people's files
(RETFound, DINOv2, RETFound-Green, timm) goes through :mod:`retinassl.models.vit_weights`.

The encoder interface (:class:`~retinassl.models.base.Encoder`):

- ``forward_features(x)``: the patch tokens after the final norm as a map ``(B, D, H/p, W/p)``
  (class and register tokens dropped), for Grad-CAM and linear heads on a grid;
- ``forward(x)``: the pooled embedding ``(B, D)``: the class token (``pooling="cls"``) or the mean of
  the patch tokens (``pooling="mean"``, as RETFound and RETFound-Green are used), after the final
  norm (then ``fc_norm`` when present: timm's "avg" pooling with ``fc_norm``, where ``norm`` is an
  identity);
- ``forward_pyramid(x)``: three maps for a U-Net decoder, with ``reductions = (4, 8, p)``: the
  tokens after block ``round(depth/3)`` and ``round(2*depth/3)`` (passed through the final norm, as
  timm's ``forward_intermediates(norm=True)``) bilinearly resized to strides 4 and 8, and the last map
  of ``forward_features`` at stride ``p``. A plain ViT has one resolution; the upsampled levels only
  give a decoder skips at the sizes it expects (no new detail: the U-Net's full-resolution stem
  brings that);
- any input size: the position embedding is resampled bicubically (antialiased, as timm's
  ``resample_abs_pos_embed``) to the input's patch grid; class and register tokens are not resampled.
  Sides that are not a multiple of ``p`` lose their last ``side % p`` pixels (a strided convolution).

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from retinassl.errors import ConfigError
from retinassl.models.base import Encoder
from retinassl.models.registry import register_encoder

Pooling = Literal["cls", "mean"]

#: (embed_dim, depth, num_heads) of the named sizes (Touvron et al. 2021 for tiny/small; ViT paper).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}

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
        :meth:`VisionTransformer.tokens`), ``mask`` ``(B, N)`` float (1 = hidden), ``restore``
        ``(B, N)`` long: the permutation that puts ``[visible..., hidden...]`` back in grid order.
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


@register_encoder("vit")
class VisionTransformer(Encoder):
    """A ViT encoder (no classifier) with timm's parameter names; see the module docstring.

    Registered as ``vit`` (any width and depth: tests, custom sizes) and, with the sizes fixed, as
    ``vit_tiny``, ``vit_small``, ``vit_base`` and ``vit_large``.

    Args:
        embed_dim: token width ``D`` (``num_features``).
        depth: number of blocks.
        num_heads: attention heads (``D`` must be divisible by it).
        patch_size: ``p``, the side of a square patch (16 for ViT/MAE/RETFound, 14 for DINOv2).
        img_size: the input side the position embedding is stored for (its grid is
            ``img_size // p``); other sizes work, the embedding is resampled on the fly.
        in_channels: input channels.
        num_register_tokens: register tokens (0: none).
        layer_scale: initial value of the layer-scale ``gamma`` (e.g. 1e-5 for DINOv2); None: no
            layer scale.
        pooling: ``"cls"`` or ``"mean"`` (of the patch tokens) for the pooled embedding.
        class_token: prepend a class token (``cls_token``). Needed by ``pooling="cls"``.
        no_embed_class: the position embedding covers only the patch tokens; None: True exactly
            when there are register tokens (timm's register models).
        fc_norm: timm's ``fc_norm``: a LayerNorm after pooling, and no final ``norm`` on the tokens
            (timm's ``global_pool="avg"`` default; MAE/RETFound fine-tuned checkpoints). False: a
            final ``norm`` on every token, then pooling (pretrained MAE, DINOv2, RETFound-Green).
        qkv_bias: bias in the ``qkv`` projection.
        mlp_ratio: hidden width of the MLP as a multiple of ``D``.
        drop_path: stochastic-depth rate of the last block (linearly increasing from 0).
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int = 16, img_size: int = 224,
                 in_channels: int = 3, num_register_tokens: int = 0, layer_scale: float | None = None,
                 pooling: Pooling = "cls", class_token: bool = True, no_embed_class: bool | None = None,
                 fc_norm: bool = False, qkv_bias: bool = True, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"ViT pooling must be 'cls' or 'mean', got {pooling!r}")
        if pooling == "cls" and not class_token:
            raise ConfigError("ViT pooling='cls' needs class_token=True")
        if patch_size < 1 or img_size < patch_size:
            raise ConfigError(f"ViT img_size {img_size} must be at least patch_size {patch_size} >= 1")
        if num_register_tokens < 0 or depth < 1:
            raise ConfigError(f"ViT needs depth >= 1 and num_register_tokens >= 0 "
                              f"(got {depth}, {num_register_tokens})")
        if not 0 <= drop_path < 1:
            raise ConfigError(f"ViT drop_path must be in [0, 1), got {drop_path}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.img_size = img_size
        self.pooling: Pooling = pooling
        self.num_register_tokens = num_register_tokens
        self.no_embed_class = num_register_tokens > 0 if no_embed_class is None else no_embed_class
        self.num_prefix_tokens = int(class_token) + num_register_tokens
        self.num_features = embed_dim
        self.grid = (img_size // patch_size, img_size // patch_size)

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                          if num_register_tokens else None)
        pos_prefix = 0 if self.no_embed_class else int(class_token) + num_register_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_prefix + self.grid[0] * self.grid[1], embed_dim))
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, layer_scale, rates[i])
                                    for i in range(depth))
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if fc_norm else None

        self.pyramid_depths = tuple(sorted({max(1, round(depth / 3)), max(1, round(2 * depth / 3))} - {depth}))
        self.feature_channels = (embed_dim,) * (len(self.pyramid_depths) + 1)
        self.reductions = (4, 8, patch_size)[-len(self.feature_channels):]
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's default: truncated normal (std 0.02) for position/class/register tokens and linear
        weights, zero biases; LayerNorm ones/zeros. Draws from the global RNG (build the encoder
        under a seed: :func:`retinassl.models.initialize.seeded_init`)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid ``(H // p, W // p)`` of an input of ``height x width`` pixels."""
        return height // self.patch_size, width // self.patch_size

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        return resample_pos_embed(self.pos_embed, grid, self.grid, num_prefix_tokens=prefix)

    def tokens(self, x: torch.Tensor, taps: tuple[int, ...] = (),
               keep: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the transformer.

        Args:
            x: ``(B, in_channels, H, W)`` with ``H, W >= p``.
            taps: block counts after which to keep the tokens (1-based), e.g. ``(4, 8)``.
            keep: ``(B, n)`` indices (row-major over the patch grid) of the only patches to encode,
                after their position embedding is added (MAE's encoder on visible patches:
                :func:`random_masking`); None: all patches.

        Returns:
            ``(tokens, tapped)``: the final tokens ``(B, prefix + gh * gw, D)`` (or ``prefix + n``
            with ``keep``) before the final norm (prefix = class then register tokens), and the
            tapped tokens in the same layout.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        grid = self.patch_grid(x.shape[2], x.shape[3])
        if min(grid) < 1:
            raise ValueError(f"input {tuple(x.shape[2:])} is smaller than one {self.patch_size}px patch")
        t = self.patch_embed(x)
        b = t.shape[0]
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(b, -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(b, -1, -1))
        pos = self._pos_embed(grid)
        pos_prefix = pos.shape[1] - grid[0] * grid[1]  # positions of the class (and register) tokens
        t = t + pos[:, pos_prefix:]
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
        if prefix:
            tokens = torch.cat(prefix, dim=1)
            t = torch.cat([tokens + pos[:, :pos_prefix] if pos_prefix else tokens, t], dim=1)
        tapped = []
        for i, block in enumerate(self.blocks, start=1):
            t = block(t)
            if i in taps:
                tapped.append(t)
        return t, tapped

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, prefix + gh * gw, D)`` -> patch tokens as ``(B, D, gh, gw)``."""
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], grid[0], grid[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> patch tokens after the final norm, ``(B, D, H // p, W // p)``."""
        tokens, _ = self.tokens(x)
        return self._to_map(self.norm(tokens), self.patch_grid(x.shape[2], x.shape[3]))

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> ``[(B, D, H // 4, W // 4), (B, D, H // 8, W // 8), (B, D, H // p, W // p)]``
        (intermediate token maps resized; see the module docstring; fewer levels when depth < 3)."""
        grid = self.patch_grid(x.shape[2], x.shape[3])
        tokens, tapped = self.tokens(x, self.pyramid_depths)
        levels = []
        for t, r in zip(tapped, self.reductions):
            size = (max(1, x.shape[2] // r), max(1, x.shape[3] // r))
            levels.append(F.interpolate(self._to_map(self.norm(t), grid), size=size, mode="bilinear",
                                        align_corners=False))
        levels.append(self._to_map(self.norm(tokens), grid))
        return levels

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens ``(B, prefix + N, D)`` (before the final norm) -> embedding ``(B, D)``."""
        tokens = self.norm(tokens)
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return self.fc_norm(pooled) if self.fc_norm is not None else pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> pooled embedding ``(B, D)`` (class token or mean of patch tokens)."""
        tokens, _ = self.tokens(x)
        return self.pool(tokens)

    def no_weight_decay(self) -> set[str]:
        """Parameter names timm exempts from weight decay (tokens and position embedding)."""
        return {name for name in ("pos_embed", "cls_token", "reg_token") if getattr(self, name) is not None}


def _named_size(size: str) -> Callable[..., VisionTransformer]:
    embed_dim, depth, num_heads = VIT_SIZES[size]

    def build(**kwargs: Any) -> VisionTransformer:
        return VisionTransformer(embed_dim, depth, num_heads, **kwargs)

    build.__name__ = build.__qualname__ = size
    build.__doc__ = (f"{size}: a ViT {embed_dim} wide, {depth} blocks, {num_heads} heads; keyword arguments as "
                     f":class:`VisionTransformer` except the three sizes.")
    return build


# vit_tiny (DeiT-Ti), vit_small (RETFound-Green: patch 14, 4 registers, layer scale, 392 px),
# vit_base, vit_large (RETFound MAE: patch 16; RETFound-DINOv2: patch 14, layer scale)
for _size in VIT_SIZES:
    register_encoder(_size)(_named_size(_size))

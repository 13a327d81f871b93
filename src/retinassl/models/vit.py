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

The blocks (patch embedding, attention with :func:`torch.nn.functional.scaled_dot_product_attention`,
MLP, layer scale, drop path) are in :mod:`retinassl.models.vit_blocks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from retinassl.errors import ConfigError
from retinassl.models.base import Encoder
from retinassl.models.registry import register_encoder
from retinassl.models.vit_blocks import LN_EPS, Block, PatchEmbed, resample_pos_embed

Pooling = Literal["cls", "mean"]

#: (embed_dim, depth, num_heads) of the named sizes (Touvron et al. 2021 for tiny/small; ViT paper).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


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

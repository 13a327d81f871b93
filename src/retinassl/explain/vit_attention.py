"""Explanations of ViT encoders: the patch-token map for Grad-CAM, and attention rollout.

**Grad-CAM on the token map.** A ViT has no convolutional map; its patch tokens, reshaped to the
patch grid ``(B, D, H/p, W/p)`` (class and register tokens dropped), play that part. Which tokens: a
class-token classifier reads the patch tokens only through attention, so the patch tokens *after*
the last block have no path to its output (their gradient is zero). As in the ViT recipe of
pytorch-grad-cam (target ``blocks[-1].norm1``) and Chefer et al. 2021, the map is the tokens
*entering* the last block: the deepest tokens the pooled embedding still reads, whether it is the
class token or the mean of the patch tokens. :func:`vit_pooled_through` runs the encoder unchanged
with those tokens passed through a layer (the Grad-CAM hook point of
:class:`~retinassl.explain.gradcam.CamModel`), so the explained score is exactly the classifier's.

**Attention rollout** (Abnar & Zuidema 2020): "we assume the identities of input tokens are linearly
combined through the layers based on the attention weights ... To compute the attention from l_i to
l_j, we recursively multiply the attention weights matrices in all the layers below", with the
residual connection modelled as ``A = 0.5 W_att + 0.5 I`` (heads averaged, rows renormalised).
:func:`attention_rollout` gives, for each image, how much the pooled token (the class token, or the
mean of the patch-token rows for mean pooling) draws on each patch, as a patch-grid map. It is
class-agnostic (the same map whatever output is explained).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retinassl.models.vit import VisionTransformer


def vit_pooled_through(encoder: VisionTransformer, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``encoder(x)`` (the pooled embedding ``(B, D)``) with the patch tokens entering the last block
    passed through ``layer`` as a map ``(B, D, H/p, W/p)`` (an identity for Grad-CAM's hooks)."""
    grid = encoder.patch_grid(x.shape[2], x.shape[3])
    prefix = encoder.num_prefix_tokens

    def route(module: nn.Module, args: tuple) -> tuple:
        tokens = args[0]
        b, _, d = tokens.shape
        fmap = layer(tokens[:, prefix:].transpose(1, 2).reshape(b, d, grid[0], grid[1]))
        return (torch.cat([tokens[:, :prefix], fmap.flatten(2).transpose(1, 2)], dim=1), *args[1:])

    handle = encoder.blocks[-1].register_forward_pre_hook(route)
    try:
        return encoder(x)
    finally:
        handle.remove()


def attention_maps(encoder: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """The attention probabilities of every block, ``(B, heads, T, T)`` each (``T`` = class and
    register tokens then patches), as softmax(q k^T / sqrt(d_head)) of the block's own ``qkv`` on
    its normalised input (what :func:`torch.nn.functional.scaled_dot_product_attention` computes)."""
    inputs: list[torch.Tensor] = []
    handles = [block.attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
               for block in encoder.blocks]
    try:
        with torch.no_grad():
            encoder(x)
    finally:
        for h in handles:
            h.remove()
    maps = []
    with torch.no_grad():
        for block, t in zip(encoder.blocks, inputs):
            attn = block.attn
            b, n, d = t.shape
            qkv = attn.qkv(t).reshape(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
            scores = qkv[0].float() @ qkv[1].float().transpose(-2, -1) / (d // attn.num_heads) ** 0.5
            maps.append(scores.softmax(dim=-1))
    return maps


def attention_rollout(encoder: VisionTransformer, x: torch.Tensor, residual: float = 0.5,
                      upsample: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020; see the module docstring) of the pooled token.

    Args:
        encoder: the ViT (evaluated as it is; put it in eval mode for dropout-free maps).
        x: ``(B, C, H, W)`` normalised inputs.
        residual: weight of the identity in each layer's ``residual * I + (1 - residual) * A``.
        upsample: bilinearly resize the map to ``(H, W)``; False: the patch grid ``(H/p, W/p)``.

    Returns:
        ``(B, H, W)`` (or ``(B, H/p, W/p)``) float maps, each divided by its maximum (1 = the most
        attended patch; the values are proportional to the rolled-out attention).
    """
    grid = encoder.patch_grid(x.shape[2], x.shape[3])
    prefix = encoder.num_prefix_tokens
    rollout = None
    for attn in attention_maps(encoder, x):
        a = attn.mean(dim=1)
        a = residual * torch.eye(a.shape[-1]) + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    assert rollout is not None
    if encoder.pooling == "cls":
        row = rollout[:, 0]
    else:
        row = rollout[:, prefix:].mean(dim=1)
    maps = row[:, prefix:].reshape(-1, 1, grid[0], grid[1])
    if upsample:
        maps = F.interpolate(maps, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
    return (maps / maps.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12))[:, 0]

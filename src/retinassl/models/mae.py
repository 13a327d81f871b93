"""The pieces of masked-autoencoder pretraining that are models and tensors: the light decoder,
patchify / unpatchify, the normalised-pixel loss, and the reconstruction shown in reports.

He et al. 2022 (MAE): "we mask random patches of the input image and reconstruct the missing pixels
... our encoder operates only on the visible subset of patches (without mask tokens), along with a
lightweight decoder that reconstructs the original image from the latent representation and mask
tokens", and "the loss function computes the mean squared error (MSE) between the reconstructed and
original images in the pixel space ... We compute the loss only on masked patches", with the
normalised-pixel target: "the normalized pixel values of each masked patch" (mean and standard
deviation over the patch's pixels). RETFound (Zhou et al. 2023) pretrains ViT-L/16 this way.

The encoder side is :class:`~retinassl.models.vit.VisionTransformer` (``tokens(x, keep=...)`` encodes
only the visible patches; :func:`~retinassl.models.vit_blocks.random_masking` draws them). The decoder's
parameter names are MAE's (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
``decoder_blocks.N.*``, ``decoder_norm``, ``decoder_pred``), so the decoder half of an MAE or
RETFound pretraining checkpoint maps onto it too (to continue pretraining).

Patch vectors are ordered as MAE's ``patchify``: patches row-major over the grid, each patch's
pixels as ``(row, column, channel)``.
"""

from __future__ import annotations

import torch
from torch import nn

from retinassl.models.vit_blocks import LN_EPS, Block, resample_pos_embed


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], class_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine position embedding: ``(1, [1 +] gh * gw, dim)`` (a zero row
    first for the class token). Half the channels encode the column, half the row (each half
    ``[sin, cos]`` of position x frequency, frequencies ``1 / 10000^(k / (dim/4))``)."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([one_d(cols), one_d(rows)], dim=1)  # MAE: first half from the w-coordinate
    if class_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()[None]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/p) * (W/p), p * p * C)`` (MAE's order; sides cropped to a
    multiple of ``p``, as the patch embedding does)."""
    b, c, h, w = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = images[:, :, : gh * p, : gw * p].reshape(b, c, gh, p, gw, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, gh * gw, p * p * C)`` -> ``(B, C, gh * p, gw * p)``."""
    b = patches.shape[0]
    p = patch_size
    x = patches.reshape(b, grid[0], grid[1], p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, grid[0] * p, grid[1] * p)


def patch_targets(images: torch.Tensor, patch_size: int, norm_pix: bool = True,
                  eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reconstruction targets ``(B, N, p*p*C)`` and each patch's mean and std ``(B, N, 1)``
    (MAE's ``norm_pix_loss``: ``(x - mean) / sqrt(var + eps)`` with the unbiased variance over the
    patch's pixels and channels; without ``norm_pix`` the pixels themselves, mean 0 and std 1)."""
    target = patchify(images, patch_size)
    if not norm_pix:
        ones = torch.ones_like(target[..., :1])
        return target, 0 * ones, ones
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True) + eps).sqrt()
    return (target - mean) / std, mean, std


def mae_loss(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int,
             norm_pix: bool = True) -> torch.Tensor:
    """MAE's loss: the mean over hidden patches of the per-patch mean squared error.

    Args:
        pred: ``(B, N, p*p*C)`` decoder output.
        images: ``(B, C, H, W)`` the (normalised) input images.
        mask: ``(B, N)``, 1 for hidden patches (:func:`~retinassl.models.vit_blocks.random_masking`).
        norm_pix: targets normalised per patch (MAE's and RETFound's setting).

    Returns:
        a scalar (float32).
    """
    target, _, _ = patch_targets(images, patch_size, norm_pix)
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def reconstruction(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int,
                   norm_pix: bool = True) -> torch.Tensor:
    """The image MAE's figures show: visible patches from the input, hidden ones from the
    prediction (put back on each true patch's mean and std when ``norm_pix``): ``(B, C, H', W')``
    with ``H' = (H // p) * p``."""
    _, mean, std = patch_targets(images, patch_size, norm_pix)
    pixels = pred.float() * std + mean
    patches = torch.where(mask[..., None].bool(), pixels, patchify(images, patch_size).float())
    grid = (images.shape[2] // patch_size, images.shape[3] // patch_size)
    return unpatchify(patches, patch_size, grid, images.shape[1])


class MAEDecoder(nn.Module):
    """MAE's light decoder: encoded visible tokens + mask tokens -> pixels of every patch.

    ``forward(tokens, restore, grid)``: ``tokens`` ``(B, prefix + n_keep, D)`` from the encoder (after
    its final norm; ``prefix`` = class then register tokens), ``restore`` ``(B, N)`` from
    :func:`~retinassl.models.vit_blocks.random_masking`, ``grid`` the patch grid ``(gh, gw)`` with
    ``gh * gw = N``; returns ``(B, N, p*p*C)`` predictions in :func:`patchify` order.

    Args:
        encoder_dim: ``D``.
        patch_size, in_channels: of the images reconstructed.
        grid: the patch grid the fixed position embedding is built for (others are resampled).
        num_prefix_tokens: the encoder's class + register tokens (they pass through the decoder;
            the first one, the class token, gets the class position, registers none).
        decoder_dim, depth, num_heads: MAE's defaults are 512, 8, 16; "light": a few blocks suffice.
    """

    def __init__(self, encoder_dim: int, patch_size: int, in_channels: int, grid: tuple[int, int],
                 num_prefix_tokens: int = 1, decoder_dim: int = 512, depth: int = 8, num_heads: int = 16,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid = tuple(grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(decoder_dim, self.grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, num_heads, mlp_ratio, True, None, 0.0)
                                            for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * in_channels)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.decoder_embed(tokens)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        b, n = restore.shape
        hidden = self.mask_token.expand(b, n - visible.shape[1], -1).to(visible.dtype)
        patches = torch.cat([visible, hidden], dim=1)
        patches = torch.gather(patches, 1, restore[..., None].expand(-1, -1, patches.shape[-1]))
        pos = resample_pos_embed(self.decoder_pos_embed, tuple(grid), self.grid, num_prefix_tokens=1)
        patches = patches + pos[:, 1:]
        if self.num_prefix_tokens:
            prefix = torch.cat([prefix[:, :1] + pos[:, :1], prefix[:, 1:]], dim=1)
        x = torch.cat([prefix, patches], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, self.num_prefix_tokens:]

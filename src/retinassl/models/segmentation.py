"""A U-Net over any registered encoder: the encoder's pyramid -> per-pixel logits at the input size.

Ronneberger et al. 2015: "Every step in the expansive path consists of an upsampling of the feature
map followed by a 2x2 convolution ("up-convolution") that halves the number of feature channels, a
concatenation with the correspondingly cropped feature map from the contracting path, and two 3x3
convolutions, each followed by a ReLU." Here the contracting path is any :class:`Encoder`
(``unet``, ``resnet18/34/50``, ``convnet``, or one loaded from a pretraining checkpoint); the
expanding path is built from its ``feature_channels`` and works for any ``reductions``.

Used by vessel segmentation (:mod:`retinassl.methods.vessel_segmentation`, one output channel, sigmoid)
and by OCT layer segmentation (``out_channels = K`` layers, softmax over dim 1). For example, on
B-scans::

    from retinassl.models import build_encoder
    from retinassl.models.segmentation import UNet

    encoder = build_encoder("unet", in_channels=1, channels=(16, 32, 64, 128))
    model = UNet(encoder, out_channels=8)             # (B, 1, H, W) -> (B, 8, H, W) logits
    logits = model(bscans)                            # any H, W (non-square is fine)

    # or from a pretraining checkpoint (weights loaded strictly, decoder fresh):
    model = unet_from_checkpoint("runs/pretrain-.../encoder", out_channels=8)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retinassl.models.base import Encoder
from retinassl.models.registry import build_encoder
from retinassl.models.unet import double_conv


class DecoderBlock(nn.Module):
    """Upsample to the skip's size (bilinear), concatenate the skip, two (3x3 conv, BN, ReLU).

    ``(B, in_channels, h, w)`` and skip ``(B, skip_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    Bilinear upsampling to the exact skip size (instead of a fixed factor 2) lets one decoder serve
    encoders whose levels are 4x apart (``convnet``: strides 4 -> 16) or whose sizes are rounded
    (odd inputs, valid convolutions).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = double_conv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """The expanding path of a U-Net for one encoder: its pyramid (and the input) -> logits.

    ``forward(pyramid, x)``: ``pyramid`` is ``encoder.forward_pyramid(x)`` (shallowest level
    first), ``x`` the ``(B, C, H, W)`` input; returns logits ``(B, out_channels, H, W)``.

    Args:
        encoder: the encoder whose pyramid it decodes (only its ``feature_channels``,
            ``reductions`` and ``in_channels`` are read; the decoder does not hold it).
        out_channels, decoder_channels, stem_channels: see :class:`UNet`.
    """

    def __init__(self, encoder: Encoder, out_channels: int = 1,
                 decoder_channels: Sequence[int] | None = None, stem_channels: int = 16) -> None:
        super().__init__()
        skips = tuple(int(c) for c in encoder.feature_channels)
        if len(skips) < 2:
            raise ValueError(f"a U-Net needs an encoder with at least 2 pyramid levels, got {len(skips)}")
        widths = tuple(int(c) for c in (decoder_channels or skips[:-1]))
        if len(widths) != len(skips) - 1:
            raise ValueError(f"decoder_channels needs {len(skips) - 1} values (one per skip level), "
                             f"got {len(widths)}")
        self.out_channels = out_channels
        self.blocks = nn.ModuleList()
        cin = skips[-1]
        for level in range(len(skips) - 2, -1, -1):  # deepest skip first
            self.blocks.append(DecoderBlock(cin, skips[level], widths[level]))
            cin = widths[level]
        self.full_resolution = encoder.reductions[0] > 1
        if self.full_resolution:
            self.stem = double_conv(encoder.in_channels, stem_channels)
            self.final = DecoderBlock(cin, stem_channels, stem_channels)
            cin = stem_channels
        self.head = nn.Conv2d(cin, out_channels, 1)

    def forward(self, pyramid: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        y = pyramid[-1]
        for block, skip in zip(self.blocks, reversed(pyramid[:-1])):
            y = block(y, skip)
        if self.full_resolution:
            y = self.final(y, self.stem(x))
        elif y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(y)


def match_channels(x: torch.Tensor, encoder: Encoder) -> torch.Tensor:
    """Repeat a single-channel ``(B, 1, H, W)`` input when ``encoder`` expects 3 channels (green
    channel into an RGB-pretrained encoder); any other mismatch is an error naming the shapes."""
    if x.shape[1] == 1 and encoder.in_channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != encoder.in_channels:
        raise ValueError(f"input has {x.shape[1]} channels but the encoder expects "
                         f"{encoder.in_channels} (input shape {tuple(x.shape)})")
    return x


def segment(encoder: Encoder, decoder: UNetDecoder, x: torch.Tensor,
            encoder_frozen: bool = False) -> torch.Tensor:
    """``(B, C, H, W)`` -> logits ``(B, K, H, W)``; a frozen encoder runs without gradients."""
    x = match_channels(x, encoder)
    if encoder_frozen:
        with torch.no_grad():
            pyramid = encoder.forward_pyramid(x)
    else:
        pyramid = encoder.forward_pyramid(x)
    return decoder(pyramid, x)


class UNet(nn.Module):
    """Encoder + U-Net decoder with skip connections: ``(B, C, H, W)`` -> logits ``(B, K, H, W)``.

    Args:
        encoder: any :class:`Encoder`; its ``forward_pyramid`` levels are the skips, from the
            shallowest (highest resolution) to the deepest (the decoder's input).
        out_channels: ``K`` output channels (1 for binary vessel maps: sigmoid; ``K`` classes:
            softmax over dim 1).
        decoder_channels: output channels of the decoder block at each skip level, shallowest
            first (``len(encoder.feature_channels) - 1`` values; default: the encoder's own
            ``feature_channels[:-1]``, the symmetric U-Net).
        stem_channels: when the encoder's first level is coarser than the input (``reductions[0]
            > 1``, e.g. ResNets and ``convnet`` at stride 2), a full-resolution branch (two 3x3
            convolutions on the input, ``stem_channels`` wide) is concatenated after upsampling
            to the input size, so thin structures (1-2 px vessels) keep full-resolution detail.
            Ignored for encoders whose first level is at stride 1 (``unet``).
        decoder: an existing decoder for ``encoder`` (the other decoder arguments are then
            ignored), e.g. to wrap a trained method's modules without copying them.

    The output always has the input's ``H, W`` (any size; sizes divisible by the encoder's
    largest reduction avoid rounding inside the encoder). The encoder's ``in_channels`` must match
    ``C``, except that a single-channel input is repeated for a 3-channel encoder
    (:func:`match_channels`).

    Parameter names are ``encoder.*`` (exactly the encoder checkpoint's names) and ``decoder.*``.
    :meth:`freeze_encoder` stops gradients into the encoder and keeps it in eval mode (batch-norm
    statistics fixed) until ``freeze_encoder(False)``; the vessel trainer uses it for "frozen for
    the first N epochs".
    """

    def __init__(self, encoder: Encoder, out_channels: int = 1,
                 decoder_channels: Sequence[int] | None = None, stem_channels: int = 16,
                 decoder: UNetDecoder | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder if decoder is not None else \
            UNetDecoder(encoder, out_channels, decoder_channels, stem_channels)
        self.encoder_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, out_channels, H, W)``."""
        return segment(self.encoder, self.decoder, x, self.encoder_frozen)

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stop (or restart) training the encoder: no gradients, eval mode while frozen."""
        set_encoder_frozen(self, self.encoder, frozen)
        self.encoder_frozen = frozen

    def train(self, mode: bool = True) -> UNet:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self


def set_encoder_frozen(owner: nn.Module, encoder: Encoder, frozen: bool) -> None:
    """Turn gradients of ``encoder`` off (and put it in eval mode) or back on (and follow
    ``owner``'s training mode)."""
    for p in encoder.parameters():
        p.requires_grad_(not frozen)
    encoder.train(owner.training and not frozen)


def unet_from_checkpoint(path: str | Path, out_channels: int = 1,
                         decoder_channels: Sequence[int] | None = None,
                         stem_channels: int = 16) -> UNet:
    """A U-Net whose encoder is loaded (strictly, no key renaming) from an encoder checkpoint
    directory written by :func:`retinassl.models.checkpoint.save_encoder`; the decoder starts fresh."""
    from retinassl.models.checkpoint import load_encoder

    encoder, _ = load_encoder(path)
    return UNet(encoder, out_channels, decoder_channels, stem_channels)


def build_unet(arch: str, encoder_kwargs: dict | None = None, out_channels: int = 1,
               decoder_channels: Sequence[int] | None = None, stem_channels: int = 16) -> UNet:
    """A U-Net around a freshly initialised registered encoder (``build_encoder(arch, **kwargs)``)."""
    encoder = build_encoder(arch, **(encoder_kwargs or {}))
    return UNet(encoder, out_channels, decoder_channels, stem_channels)

"""Small networks pretext tasks put on top of an encoder and throw away afterwards: MLP heads, a
decoder without skip connections, and an image discriminator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retinassl.models import Encoder


def mlp(in_features: int, hidden: int, out_features: int, batch_norm: bool = False) -> nn.Sequential:
    """``Linear -> [BatchNorm] -> ReLU -> Linear``: ``(B, in_features)`` -> ``(B, out_features)``."""
    layers: list[nn.Module] = [nn.Linear(in_features, hidden, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out_features)]
    return nn.Sequential(*layers)


class ConvDecoder(nn.Module):
    """Decode the deepest feature map of an encoder back to an image, with no skip connections.

    A 1x1 convolution squeezes the features to ``bottleneck`` channels (the code), then
    ``log2(reduction)`` stages of (2x nearest upsampling, 3x3 conv, batch norm, ReLU) halve the
    channels from ``width`` (to no fewer than 16), and a 3x3 convolution gives ``out_channels``.
    The result is resized to the requested size when the encoder's map was not exactly
    ``input / reduction`` (e.g. the ConvNet's unpadded layers).

    Args:
        in_channels: channels of the encoder's deepest map (``encoder.num_features``).
        out_channels: image channels.
        reduction: the encoder's deepest stride (``encoder.reductions[-1]``).
        width: channels of the first upsampling stage.
        bottleneck: channels of the code.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int, width: int = 256,
                 bottleneck: int = 64) -> None:
        super().__init__()
        stages = max(0, round(math.log2(reduction)))
        self.squeeze = nn.Sequential(nn.Conv2d(in_channels, bottleneck, 1, bias=False),
                                     nn.BatchNorm2d(bottleneck), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = bottleneck
        for i in range(stages):
            cout = max(16, width // 2 ** i)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            cin = cout
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, out_channels, 3, padding=1)

    @classmethod
    def for_encoder(cls, encoder: Encoder, width: int = 256, bottleneck: int = 64) -> ConvDecoder:
        """The decoder that maps ``encoder``'s deepest map back to its input channels."""
        return cls(encoder.num_features, encoder.in_channels, encoder.reductions[-1], width, bottleneck)

    def reconstruct(self, encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``encoder`` -> code -> image ``(B, C, H, W)``."""
        return self(encoder.forward_features(x), tuple(x.shape[-2:]))

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, in_channels, h, w)`` -> ``(B, out_channels, *size)``."""
        y = self.out(self.up(self.squeeze(features)))
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class ImageDiscriminator(nn.Module):
    """A DCGAN-style discriminator: four (4x4 stride-2 conv, leaky ReLU) layers with ``width``,
    2, 4 and 8 x ``width`` channels, global average pooling and a linear layer:
    ``(B, C, H, W)`` -> real/fake logits ``(B,)`` (any ``H, W >= 16``)."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(4):
            cout = width * 2 ** i
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))[:, 0]

"""The contracting path of the U-Net of Ronneberger et al. 2015 as an encoder.

"The contracting path follows the typical architecture of a convolutional network. It consists of
the repeated application of two 3x3 convolutions ..., each followed by a rectified linear unit
(ReLU) and a 2x2 max pooling operation with stride 2 for downsampling." (Ronneberger et al. 2015).
Batch normalisation is added after each convolution (as in MONAI's BasicUNet). Its pyramid levels
are the skip connections a U-Net decoder consumes (:mod:`retinassl.models.segmentation`).
"""

from __future__ import annotations

import torch
from torch import nn

from retinassl.models.base import Encoder
from retinassl.models.registry import register_encoder


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two (3x3 conv, batch norm, ReLU) layers."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_encoder("unet")
class UNetEncoder(Encoder):
    """U-Net contracting path.

    Args:
        in_channels: input channels.
        channels: channels of each level (the first at full resolution).

    Pyramid levels: one per entry of ``channels``, at strides 1, 2, 4, ...
    """

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.in_channels = in_channels
        self.blocks = nn.ModuleList()
        cin = in_channels
        for c in channels:
            self.blocks.append(double_conv(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.feature_channels = channels
        self.reductions = tuple(2 ** i for i in range(len(channels)))
        self.num_features = channels[-1]

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            out.append(x)
        return out

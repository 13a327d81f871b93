"""ResNet-18/34/50 encoders from MONAI, with the torchvision stem and parameter names.

MONAI's ``ResNet`` with ``bias_downsample=False``, a 7x7 stride-2 first convolution and max pooling
is the torchvision architecture, and its parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``...)
are torchvision's, so ImageNet weights saved by torchvision or timm load with no key renaming
(see :mod:`retinassl.models.checkpoint`).
"""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck

from retinassl.models.base import Encoder
from retinassl.models.registry import register_encoder

_DEPTHS = {"resnet18": (ResNetBlock, (2, 2, 2, 2)), "resnet34": (ResNetBlock, (3, 4, 6, 3)),
           "resnet50": (ResNetBottleneck, (3, 4, 6, 3))}


class ResNetEncoder(Encoder):
    """A torchvision-equivalent ResNet trunk (no classifier).

    Args:
        depth: "resnet18", "resnet34" or "resnet50".
        in_channels: input channels (3 for colour fundus, 1 for infrared).

    Pyramid levels: stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32).
    """

    def __init__(self, depth: str, in_channels: int = 3) -> None:
        super().__init__()
        block, layers = _DEPTHS[depth]
        net = ResNet(block, list(layers), [64, 128, 256, 512], spatial_dims=2,
                     n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
                     feed_forward=False, bias_downsample=False)
        # Adopt the trunk's modules directly so parameter names match torchvision.
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = block.expansion
        self.in_channels = in_channels
        self.feature_channels = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)
        self.reductions = (2, 4, 8, 16, 32)
        self.num_features = 512 * expansion

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.act(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [stem, f1, f2, f3, self.layer4(f3)]


@register_encoder("resnet18")
def resnet18(in_channels: int = 3) -> ResNetEncoder:
    return ResNetEncoder("resnet18", in_channels)


@register_encoder("resnet34")
def resnet34(in_channels: int = 3) -> ResNetEncoder:
    return ResNetEncoder("resnet34", in_channels)


@register_encoder("resnet50")
def resnet50(in_channels: int = 3) -> ResNetEncoder:
    return ResNetEncoder("resnet50", in_channels)

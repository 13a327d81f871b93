"""The shallow "conv-large" ConvNet of Salimans et al. 2016 as adapted by Lecouat et al. 2018.

Lecouat et al. 2018, Table 3 (discriminator): "3x3 conv. weightnorm 96 lReLU" x3 (the third with
stride 2), dropout 0.5, "3x3 conv. weightnorm 192 lReLU" x3 (the third with stride 2), dropout 0.5,
two "3x3 conv. 192 pad=0 stride=2", two "NiN weightnorm 192 lReLU", global pooling. The same network
without the GAN is their supervised "ConvNet" baseline. Inputs are 32x32 patches in the paper; any
size >= 32 works (the spatial size of the last map grows with the input).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from retinassl.errors import ConfigError
from retinassl.models.base import Encoder
from retinassl.models.registry import register_encoder


class InputDropout(nn.Module):
    """Table 3's "dropout, p = 0.2" on the input, **without rescaling** the kept pixels.

    ``nn.Dropout`` multiplies the kept values by ``1 / (1 - p)`` (1.25 here), so the network trains
    on inputs 25 % brighter than those it sees in evaluation. For a lesion detector that reads
    absolute intensities (exudates are bright, haemorrhages dark) that mismatch is fatal, not a
    detail: a discriminator trained this way on IDRiD ranked its own training patches with AUC 0.82
    with dropout on, 0.59 in evaluation mode, and 0.80 in evaluation mode with inputs scaled by
    1.25 (40 labelled images, 1000 steps). Here each input value is zeroed with probability ``p``
    in training and the others keep their exact values; evaluation is the identity.
    """

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _conv(cin: int, cout: int, k: int, stride: int, pad: int, wn: bool, bn: bool = False) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=not bn)
    conv = _weight_norm(conv) if wn else conv
    return nn.Sequential(conv, nn.BatchNorm2d(cout)) if bn else conv


@register_encoder("convnet")
class ConvNet(Encoder):
    """conv-large encoder.

    Args:
        in_channels: input channels.
        width: channels of the first block (96 in the paper); the second block uses ``2 * width``.
        weight_norm: weight-normalised convolutions (as in the GAN discriminator).
        dropout: use the paper's dropout (0.2 on the input, without rescaling: see
            :class:`InputDropout`; 0.5 after each block).
        slope: leaky-ReLU slope (0.2).
        batch_norm: batch normalisation after every convolution (not in the paper; a supervised
            ConvNet trains several times faster with it, a GAN discriminator should not use it).

    Pyramid levels: after block 1 (stride 2), block 2 (stride 4), and the NiN layers (stride 16).
    """

    def __init__(self, in_channels: int = 3, width: int = 96, weight_norm: bool = True,
                 dropout: bool = True, slope: float = 0.2, batch_norm: bool = False) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        act = lambda: nn.LeakyReLU(slope)  # noqa: E731
        bn = batch_norm
        self.in_channels = in_channels
        self.input_dropout = InputDropout(0.2 if dropout else 0.0)
        self.block1 = nn.Sequential(
            _conv(in_channels, w1, 3, 1, 1, weight_norm, bn), act(),
            _conv(w1, w1, 3, 1, 1, weight_norm, bn), act(),
            _conv(w1, w1, 3, 2, 1, weight_norm, bn), act(),
            nn.Dropout(0.5 if dropout else 0.0))
        self.block2 = nn.Sequential(
            _conv(w1, w2, 3, 1, 1, weight_norm, bn), act(),
            _conv(w2, w2, 3, 1, 1, weight_norm, bn), act(),
            _conv(w2, w2, 3, 2, 1, weight_norm, bn), act(),
            nn.Dropout(0.5 if dropout else 0.0))
        self.block3 = nn.Sequential(
            _conv(w2, w2, 3, 2, 0, weight_norm, bn), act(),
            _conv(w2, w2, 3, 2, 0, weight_norm, bn), act(),
            _conv(w2, w2, 1, 1, 0, weight_norm, bn), act(),
            _conv(w2, w2, 1, 1, 0, weight_norm, bn), act())
        self.num_features = w2
        self.feature_channels = (w1, w2, w2)
        self.reductions = (2, 4, 16)

    min_input_size = 32  # two valid stride-2 convolutions after a stride of 4

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ConfigError(f"the convnet encoder needs inputs of at least {self.min_input_size} px "
                              f"(got {tuple(x.shape[-2:])}); use a larger patch_size or another encoder")
        f1 = self.block1(self.input_dropout(x))
        f2 = self.block2(f1)
        return [f1, f2, self.block3(f2)]

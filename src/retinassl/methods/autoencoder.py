"""Autoencoder reconstruction (Hinton & Salakhutdinov, Science 2006, "Reducing the Dimensionality
of Data with Neural Networks").

"High-dimensional data can be converted to low-dimensional codes by training a multilayer neural
network with a small central layer to reconstruct high-dimensional input vectors." The encoder's
deepest feature map is squeezed to a small code (``bottleneck`` channels at the encoder's deepest
stride) and a decoder *without skip connections* (:class:`~retinassl.models.pretext_nets.ConvDecoder`)
reconstructs the image from the code alone: with skips (a U-Net) the network could copy its input
to its output and learn nothing. Loss: mean squared (or absolute) error over the whole image.
Optional Gaussian input noise makes it a denoising autoencoder (Vincent et al. 2008).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from retinassl.data import augment
from retinassl.methods.base import register_method
from retinassl.models import Encoder
from retinassl.methods.pretext_base import PretextConfig, PretextMethod
from retinassl.models.pretext_nets import ConvDecoder


class AutoencoderConfig(PretextConfig):
    """Autoencoder settings (plus the optimiser settings of :class:`PretextConfig`).

    Attributes:
        bottleneck: channels of the code at the encoder's deepest stride (e.g. a ResNet on
            224-pixel images: 7 x 7 x 64 numbers for 224 x 224 x 3 inputs, 48x smaller).
        decoder_width: channels of the decoder's first upsampling stage (halved at each stage).
        criterion: ``mse`` or ``l1``.
        augment: ``dihedral`` (a random flip / 90-degree rotation per image) or ``none``.
        noise: standard deviation of Gaussian noise added to the input only (0: plain
            autoencoder; > 0: denoising autoencoder).
    """

    bottleneck: int = Field(64, ge=1)
    decoder_width: int = Field(256, ge=16)
    criterion: Literal["mse", "l1"] = "mse"
    augment: Literal["none", "dihedral"] = "dihedral"
    noise: float = Field(0.0, ge=0)


@register_method
class Autoencoder(PretextMethod):
    """Encoder -> code -> skip-free decoder; reconstruction loss on the whole image.

    Batch: ``image`` ``(B, C, H, W)``.
    """

    name = "autoencoder"
    Config = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.decoder = ConvDecoder.for_encoder(encoder, config.decoder_width, config.bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> reconstruction of the same shape."""
        return self.decoder.reconstruct(self.encoder, x)

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        x = batch["image"]
        if cfg.augment == "dihedral":
            x = augment.dihedral(x, generator)
        inputs = x
        if cfg.noise > 0:
            inputs = x + cfg.noise * torch.randn(x.shape, generator=generator).to(x)
        output = self.forward(inputs).float()
        if cfg.criterion == "mse":
            return F.mse_loss(output, x.float()), {}
        return F.l1_loss(output, x.float()), {}

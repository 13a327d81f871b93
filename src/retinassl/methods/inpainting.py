"""Context-encoder in-painting (Pathak, Krähenbühl, Donahue, Darrell & Efros, CVPR 2016, "Context
Encoders: Feature Learning by Inpainting").

"We present an unsupervised visual feature learning algorithm driven by context-based pixel
prediction. By analogy with auto-encoders, we propose Context Encoders -- a convolutional neural
network trained to generate the contents of an arbitrary image region conditioned on its
surroundings." Regions of the image are replaced by the image's mean colour; the encoder and a
decoder without skip connections (:class:`~retinassl.models.pretext_nets.ConvDecoder`) predict the
whole image, and the L2 loss is taken over the masked region only. Masks are the paper's
``central`` square (a quarter of the area) or ``random_blocks`` (several possibly overlapping
squares covering up to a quarter of the image; the default, since a fixed central square always
hides the same anatomy of a fundus).

With ``adversarial > 0`` a small discriminator (:class:`~retinassl.models.pretext_nets.ImageDiscriminator`)
learns to tell real images from in-painted ones (the original image with its masked region replaced
by the prediction), and the in-painting network minimises
``(1 - adversarial) * L2 + adversarial * adversarial_loss`` (the paper used 0.999 and 0.001). The
discriminator is a second optimiser group (``discriminator``), stepped after ``main`` on the same
batch with the in-painted images that ``main`` produced (detached).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from retinassl.methods.base import register_method
from retinassl.models import Encoder
from retinassl.methods.pretext_base import PretextConfig, PretextMethod
from retinassl.models.pretext_nets import ConvDecoder, ImageDiscriminator
from retinassl.losses.regression import masked_mse


class InpaintingConfig(PretextConfig):
    """Context-encoder settings (plus the optimiser settings of :class:`PretextConfig`).

    Attributes:
        mask: ``random_blocks`` or ``central``.
        blocks: squares per image (``random_blocks``).
        block_fraction: side of each square as a fraction of the image side (``random_blocks``;
            4 blocks of 1/4 cover at most a quarter of the image).
        central_fraction: area of the central square as a fraction of the image (``central``).
        bottleneck: channels of the code at the encoder's deepest stride.
        decoder_width: channels of the decoder's first upsampling stage.
        adversarial: weight of the adversarial loss (0: L2 only, no discriminator).
        discriminator_width: channels of the discriminator's first layer.
        discriminator_lr: the discriminator's AdamW learning rate (None: ``lr``).
    """

    mask: Literal["random_blocks", "central"] = "random_blocks"
    blocks: int = Field(4, ge=1)
    block_fraction: float = Field(0.25, gt=0, lt=1)
    central_fraction: float = Field(0.25, gt=0, lt=1)
    bottleneck: int = Field(64, ge=1)
    decoder_width: int = Field(256, ge=16)
    adversarial: float = Field(0.0, ge=0, lt=1)
    discriminator_width: int = Field(32, ge=1)
    discriminator_lr: float | None = Field(None, gt=0)


def random_block_masks(batch: int, height: int, width: int, blocks: int, fraction: float,
                       generator: torch.Generator) -> torch.Tensor:
    """``(B, 1, H, W)`` float masks (1 = hidden): the union of ``blocks`` random squares of side
    ``fraction`` of the image, placed uniformly inside the image."""
    sh, sw = max(1, round(fraction * height)), max(1, round(fraction * width))
    y0 = torch.randint(0, height - sh + 1, (batch, blocks, 1), generator=generator)
    x0 = torch.randint(0, width - sw + 1, (batch, blocks, 1), generator=generator)
    ys, xs = torch.arange(height), torch.arange(width)
    rows = (ys >= y0) & (ys < y0 + sh)  # (B, blocks, H)
    cols = (xs >= x0) & (xs < x0 + sw)  # (B, blocks, W)
    return (rows[..., :, None] & cols[..., None, :]).any(1, keepdim=True).float()


def central_masks(batch: int, height: int, width: int, fraction: float) -> torch.Tensor:
    """``(B, 1, H, W)`` masks of the centred square covering ``fraction`` of the area."""
    sh, sw = round(math.sqrt(fraction) * height), round(math.sqrt(fraction) * width)
    mask = torch.zeros(batch, 1, height, width)
    top, left = (height - sh) // 2, (width - sw) // 2
    mask[:, :, top:top + sh, left:left + sw] = 1
    return mask


@register_method
class ContextEncoder(PretextMethod):
    """Encoder + skip-free decoder in-painting masked regions; optional adversarial loss.

    Batch: ``image`` ``(B, C, H, W)``. Groups: ``main`` (encoder + decoder) and, with
    ``adversarial > 0``, ``discriminator``. Logged: ``l2`` (masked L2) and, with the
    discriminator, ``adversarial`` (the generator's adversarial loss).
    """

    name = "inpainting"
    Config = InpaintingConfig

    def __init__(self, config: InpaintingConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.decoder = ConvDecoder.for_encoder(encoder, config.decoder_width, config.bottleneck)
        self.discriminator = (ImageDiscriminator(encoder.in_channels, config.discriminator_width)
                              if config.adversarial > 0 else None)
        self._fakes: tuple[torch.Tensor, torch.Tensor] | None = None  # (batch images, in-painted)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` (with hidden regions already filled) -> predicted image, same shape."""
        return self.decoder.reconstruct(self.encoder, x)

    def make_masks(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(B, 1, H, W)`` masks (1 = hidden) for the batch ``x``."""
        b, _, h, w = x.shape
        cfg = self.config
        if cfg.mask == "central":
            mask = central_masks(b, h, w, cfg.central_fraction)
        else:
            mask = random_block_masks(b, h, w, cfg.blocks, cfg.block_fraction, generator)
        return mask.to(device=x.device, dtype=x.dtype)

    def inpaint(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fill the masked region of ``x`` with each image's mean colour and predict the image."""
        fill = x.mean(dim=(2, 3), keepdim=True)
        return self.forward(x * (1 - mask) + fill * mask)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        main = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("discriminator.")]
        groups = {"main": torch.optim.AdamW(main, lr=cfg.lr, weight_decay=cfg.weight_decay)}
        if self.discriminator is not None:
            groups["discriminator"] = torch.optim.AdamW(
                self.discriminator.parameters(), lr=cfg.discriminator_lr or cfg.lr,
                weight_decay=cfg.weight_decay, betas=(0.5, 0.999))
        return groups

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        if group == "discriminator":
            return self._discriminator_loss(x, generator)
        mask = self.make_masks(x, generator)
        prediction = self.inpaint(x, mask)
        l2 = masked_mse(prediction, x, mask)
        if self.discriminator is None:
            return l2, {"l2": float(l2.detach())}
        fakes = x * (1 - mask) + prediction.to(x.dtype) * mask
        self._fakes = (x, fakes.detach())
        logits = self.discriminator(fakes).float()
        adversarial = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        weight = self.config.adversarial
        return (1 - weight) * l2 + weight * adversarial, {"l2": float(l2.detach()),
                                                           "adversarial": float(adversarial.detach())}

    def _discriminator_loss(self, x: torch.Tensor, generator: torch.Generator
                            ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.discriminator is None:
            raise ValueError("the discriminator group exists only with adversarial > 0")
        if self._fakes is not None and self._fakes[0] is x:
            fakes = self._fakes[1]
        else:  # called without the main group first (e.g. in tests): in-paint now
            with torch.no_grad():
                mask = self.make_masks(x, generator)
                fakes = x * (1 - mask) + self.inpaint(x, mask).to(x.dtype) * mask
        self._fakes = None
        real = self.discriminator(x).float()
        fake = self.discriminator(fakes).float()
        loss = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return loss, {"discriminator_accuracy": float(((real > 0).float().mean() + (fake < 0).float().mean()) / 2)}

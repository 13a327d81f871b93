"""Contrastive learning with SimCLR's NT-Xent loss (Chen, Kornblith, Norouzi & Hinton, ICML 2020,
"A Simple Framework for Contrastive Learning of Visual Representations").

"SimCLR learns representations by maximizing agreement between differently augmented views of the
same data example via a contrastive loss in the latent space." Each image is augmented twice; the
encoder's pooled embeddings pass through a projection head (MLP), and the normalised
temperature-scaled cross-entropy (NT-Xent) makes each view pick out its partner among the
``2B - 1`` other views of the batch. The projection head is discarded after pretraining.

Augmentations suited to fundus images: a random resized crop (30-100 % of the area, so that a view
keeps enough context to contain lesions and vessels), rotation by any angle with a random
horizontal flip (a fundus has no upright orientation, and left and right eyes are mirror images),
brightness/contrast/saturation jitter (cameras and illumination differ), random grayscale and
Gaussian blur (focus differs).

Negatives come from this process's batch only (no cross-device gathering under DDP).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from retinassl.data import augment
from retinassl.methods.base import register_method
from retinassl.models import Encoder
from retinassl.methods.pretext_base import PretextConfig, PretextMethod
from retinassl.models.pretext_nets import mlp
from retinassl.losses.contrastive import nt_xent


class SimCLRConfig(PretextConfig):
    """SimCLR settings (plus the optimiser settings of :class:`PretextConfig`).

    Attributes:
        temperature: NT-Xent temperature.
        projection_dim: output size of the projection head.
        projection_hidden: hidden units of the projection head (Linear-BN-ReLU-Linear).
        crop_scale: range of the area fraction kept by the random resized crop.
        rotate: rotate each view by a uniform random angle and flip half of them horizontally.
        brightness, contrast, saturation: colour-jitter strengths (factors in ``[1 - v, 1 + v]``).
        grayscale: probability of turning a view grey.
        blur: probability of blurring a view (sigma uniform in ``blur_sigma`` pixels).
        blur_sigma: range of the blur's standard deviation in pixels.
    """

    temperature: float = Field(0.2, gt=0)
    projection_dim: int = Field(128, ge=1)
    projection_hidden: int = Field(512, ge=1)
    crop_scale: tuple[float, float] = (0.3, 1.0)
    rotate: bool = True
    brightness: float = Field(0.4, ge=0, lt=1)
    contrast: float = Field(0.4, ge=0, lt=1)
    saturation: float = Field(0.3, ge=0, lt=1)
    grayscale: float = Field(0.2, ge=0, le=1)
    blur: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)


@register_method
class SimCLR(PretextMethod):
    """Encoder + projection MLP trained with NT-Xent on two augmented views per image.

    Batch: ``image`` ``(B, C, H, W)`` with ``B >= 2``. Logged: ``contrastive_accuracy`` (how often
    a view's most similar other view is its partner).
    """

    name = "simclr"
    Config = SimCLRConfig

    def __init__(self, config: SimCLRConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = mlp(encoder.num_features, config.projection_hidden, config.projection_dim,
                             batch_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> projections ``(B, projection_dim)``."""
        return self.projector(self.encoder(x))

    def view(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random augmented view of each image of ``x``."""
        cfg = self.config
        x = augment.random_resized_crop(x, generator, scale=cfg.crop_scale)
        if cfg.rotate:
            x = augment.random_affine(x, generator, degrees=180.0, scale=(1.0, 1.0), translate=0.0)
        x = augment.color_jitter(x, generator, cfg.brightness, cfg.contrast, cfg.saturation)
        x = augment.random_grayscale(x, generator, cfg.grayscale)
        if cfg.blur > 0:
            x = augment.gaussian_blur(x, generator, cfg.blur_sigma, cfg.blur)
        return x

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        if x.shape[0] < 2:
            raise ValueError("SimCLR needs at least 2 images per batch (the others are the negatives)")
        b = x.shape[0]
        views = torch.cat([self.view(x, generator), self.view(x, generator)])
        z = self.forward(views).float()
        loss = nt_xent(z[:b], z[b:], self.config.temperature)
        with torch.no_grad():
            zn = F.normalize(z, dim=1)
            sim = (zn @ zn.t()).fill_diagonal_(-2)
            partners = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
            accuracy = (sim.argmax(1) == partners).float().mean()
        return loss, {"contrastive_accuracy": float(accuracy)}

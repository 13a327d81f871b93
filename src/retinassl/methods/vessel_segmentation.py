"""Vessel segmentation: a U-Net on any encoder, trained on random FOV patches with a Dice loss.

Jang et al. 2024 extend their fundus foundation model to vessels: "The model's functionality was
further extended to include vessel segmentation using a U-Net based architecture and the Dice
coefficient as the loss function." This method is that downstream task for any registered encoder
(from scratch or from a pretraining checkpoint): the encoder's pyramid feeds a U-Net decoder
(:mod:`retinassl.models.segmentation`), patches are cut inside the field of view with the engine's
generator (:func:`~retinassl.data.vessel_inputs.sample_patches`), and the loss is MONAI's
Dice, Dice + cross-entropy, or Dice + clDice (Shit et al. 2021, "clDice -- a novel
topology-preserving loss function for tubular structure segmentation").

Pixels outside the FOV do not count: their logits are replaced by a constant "certain background"
value before the loss, so they contribute no gradient and (almost) no loss.

Batches are whole images (:class:`~retinassl.data.vessel_inputs.VesselImageDataset`):
``image`` ``(B, C, H, W)``, ``target`` (the vessel mask, or any binary mask: lesions in pretraining) and
``fov`` ``(B, 1, H, W)``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss, SoftDiceclDiceLoss
from pydantic import Field

from retinassl.config import Section
from retinassl.data import augment
from retinassl.methods.base import Method, register_method
from retinassl.models import Encoder
from retinassl.models.segmentation import UNet, UNetDecoder, segment, set_encoder_frozen
from retinassl.data.vessel_inputs import sample_patches

OUTSIDE_LOGIT = -30.0  # sigmoid(-30) ~ 1e-13: a certain background pixel


class SegmentationConfig(Section):
    """Vessel-segmentation training settings.

    Attributes:
        loss: ``dice`` (MONAI ``DiceLoss``), ``dice_ce`` (``DiceCELoss``: Dice + binary
            cross-entropy), ``cldice`` (``SoftDiceclDiceLoss``: (1 - alpha) Dice + alpha clDice).
        cldice_iterations: soft-skeleton iterations of clDice. cldice_alpha: clDice weight.
        lr: AdamW learning rate of the decoder (and of the encoder unless ``encoder_lr``).
        encoder_lr: AdamW learning rate of the encoder (None: ``lr``).
        weight_decay: AdamW weight decay.
        schedule: ``cosine`` (5 % warm-up, then cosine decay to 0) or ``constant``.
        patch_size: side of the training patches (pixels of the cached image).
        patches_per_image: patches cut from each image of a batch (patches per step =
            ``engine.batch_size * patches_per_image``).
        geometric: patch augmentation: ``affine`` (any rotation, scale 0.9-1.1, flips),
            ``dihedral`` (flips and 90-degree rotations), ``none``.
        intensity: brightness/contrast jitter amplitude (0: none).
        freeze_encoder_steps: train only the decoder for this many optimizer steps (the
            pipeline converts ``freeze_encoder_epochs`` into steps).
        decoder_channels: decoder widths, shallowest first (None: the encoder's).
        stem_channels: width of the full-resolution branch (encoders whose first level has
            stride > 1).
    """

    loss: Literal["dice", "dice_ce", "cldice"] = "dice_ce"
    cldice_iterations: int = Field(3, ge=1)
    cldice_alpha: float = Field(0.5, ge=0, le=1)
    lr: float = Field(2e-3, gt=0)
    encoder_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    patch_size: int = Field(64, ge=8)
    patches_per_image: int = Field(8, ge=1)
    geometric: Literal["none", "dihedral", "affine"] = "affine"
    intensity: float = Field(0.1, ge=0, lt=1)
    freeze_encoder_steps: int = Field(0, ge=0)
    decoder_channels: list[int] | None = None
    stem_channels: int = Field(16, ge=1)


def build_loss(config: SegmentationConfig) -> torch.nn.Module:
    """The MONAI loss of ``config.loss`` for one-channel logits (sigmoid inside the loss; Dice
    terms over the whole batch, so patches without vessels do not make the loss undefined)."""
    if config.loss == "dice":
        return DiceLoss(sigmoid=True, batch=True)
    if config.loss == "dice_ce":
        return DiceCELoss(sigmoid=True, batch=True)
    return SoftDiceclDiceLoss(iter_=config.cldice_iterations, alpha=config.cldice_alpha, sigmoid=True)


def fov_masked_logits(logits: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    """Replace logits outside the FOV (``fov`` 0) by :data:`OUTSIDE_LOGIT` (no gradient there)."""
    return torch.where(fov > 0.5, logits, torch.full_like(logits, OUTSIDE_LOGIT))


@register_method
class VesselSegmentation(Method):
    """U-Net (encoder + :class:`UNetDecoder`) trained on FOV patches (see the module docstring).

    The state dict has ``encoder.*`` and ``decoder.*`` (exactly a :class:`UNet`'s) plus
    ``steps_done`` (optimizer steps taken; restored on resume, so the encoder unfreezes at the
    same step).
    """

    name = "segmentation"
    Config = SegmentationConfig

    def __init__(self, config: SegmentationConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.decoder = UNetDecoder(encoder, 1, config.decoder_channels, config.stem_channels)
        self.criterion = build_loss(config)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))
        self._frozen: bool | None = None

    @property
    def encoder_frozen(self) -> bool:
        return int(self.steps_done) < self.config.freeze_encoder_steps

    def _sync_freezing(self) -> None:
        frozen = self.encoder_frozen
        if frozen != self._frozen:
            set_encoder_frozen(self, self.encoder, frozen)
            self._frozen = frozen

    def train(self, mode: bool = True) -> VesselSegmentation:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> vessel logits ``(B, 1, H, W)``."""
        return segment(self.encoder, self.decoder, x, self.encoder_frozen)

    def unet(self) -> UNet:
        """A :class:`UNet` sharing this method's encoder and decoder (for inference and saving)."""
        return UNet(self.encoder, decoder=self.decoder).train(self.training)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        groups = [{"params": list(self.decoder.parameters()), "lr": cfg.lr},
                  {"params": list(self.encoder.parameters()), "lr": cfg.encoder_lr or cfg.lr}]
        return {"main": torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)}

    def lr_factor(self, step: int, total_steps: int) -> float:
        if self.config.schedule == "constant":
            return 1.0
        warmup = max(1, int(0.05 * total_steps))
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return float(0.5 * (1 + np.cos(np.pi * min(1.0, progress))))

    def patches(self, batch: dict[str, Any],
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augmented training patches of a batch: inputs, soft targets (vessels, lesions), FOV masks."""
        cfg = self.config
        x, y, fov = sample_patches(batch["image"], batch["target"], batch["fov"], cfg.patch_size,
                                   cfg.patches_per_image, generator, cfg.geometric)
        if cfg.intensity > 0:
            x = augment.color_jitter(x, generator, cfg.intensity, cfg.intensity, cfg.intensity) * fov
        return x, y, fov

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        self._sync_freezing()
        x, y, fov = self.patches(batch, generator)
        if batch["image"].is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        logits = fov_masked_logits(self.forward(x).float(), fov)
        return self.criterion(logits, y), {}

    def after_step(self) -> None:
        self.steps_done += 1

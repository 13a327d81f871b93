"""Masked-autoencoder pretraining (He et al., CVPR 2022, "Masked Autoencoders Are Scalable Vision
Learners"), the method behind RETFound (Zhou et al., Nature 2023).

"Our MAE approach is simple: we mask random patches of the input image and reconstruct the missing
pixels." "Our encoder is a ViT but applied only on visible, unmasked patches ... This allows us to
train very large encoders with only a fraction of compute and memory." "The MAE decoder is only used
during pre-training to perform the image reconstruction task." The loss is the mean squared error on
the hidden patches, with each target patch normalised by its own mean and standard deviation
("normalized pixels ... improves representation quality"). MAE masks 75 % of the patches and trains
with random resized crops (scale 0.2-1) and flips, AdamW (betas 0.9, 0.95, weight decay 0.05) and a
warm-up + cosine schedule.

The encoder must be a ViT (``vit``, ``vit_tiny``... :mod:`retinassl.models.vit`); the decoder, the
masking and the loss are :mod:`retinassl.models.mae`. The decoder is discarded after pretraining; the
encoder keeps timm's parameter names, so its checkpoint also loads wherever a RETFound-style ViT does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from retinassl.data import augment
from retinassl.errors import ConfigError
from retinassl.figures.reconstructions import FIGURE_PREFIX, reconstruction_figure, sample_rows
from retinassl.methods.base import register_method
from retinassl.methods.pretext_base import PretextConfig, PretextMethod
from retinassl.models import Encoder
from retinassl.models.mae import MAEDecoder, mae_loss, reconstruction, unpatchify
from retinassl.models.vit import VisionTransformer
from retinassl.models.vit_blocks import random_masking


class MAEConfig(PretextConfig):
    """MAE settings (plus the optimiser settings of :class:`PretextConfig`, with MAE's defaults).

    Attributes:
        mask_ratio: fraction of the patches hidden from the encoder (MAE: 0.75).
        decoder_dim, decoder_depth, decoder_heads: the light decoder (MAE: 512, 8, 16; smaller here
            for a CPU budget: the decoder's cost is paid on every patch).
        norm_pix: normalise each target patch by its mean and standard deviation (MAE, RETFound).
        augment: ``crop`` (MAE's random resized crop, scale 0.2-1, then a random flip / 90-degree
            rotation), ``dihedral`` (the flip / rotation only) or ``none``.
    """

    lr: float = Field(1.5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    mask_ratio: float = Field(0.75, ge=0, lt=1)
    decoder_dim: int = Field(256, ge=8)
    decoder_depth: int = Field(4, ge=1)
    decoder_heads: int = Field(8, ge=1)
    norm_pix: bool = True
    augment: Literal["none", "dihedral", "crop"] = "crop"


@register_method
class MAE(PretextMethod):
    """Masked autoencoder: ViT on the visible patches -> light decoder -> pixels of the hidden ones.

    Batch: ``image`` ``(B, C, H, W)`` (sides multiples of the patch size avoid cropping).
    """

    name = "mae"
    Config = MAEConfig

    def __init__(self, config: MAEConfig, encoder: Encoder) -> None:
        if not isinstance(encoder, VisionTransformer):
            raise ConfigError(f"the mae method needs a ViT encoder (arch vit, vit_tiny, vit_small, vit_base or "
                              f"vit_large), got {type(encoder).__name__}")
        if config.decoder_dim % config.decoder_heads:
            raise ConfigError(f"mae decoder_dim {config.decoder_dim} is not divisible by decoder_heads "
                              f"{config.decoder_heads}")
        super().__init__(config, encoder)
        self.decoder = MAEDecoder(encoder.num_features, encoder.patch_size, encoder.in_channels, encoder.grid,
                                  encoder.num_prefix_tokens, config.decoder_dim, config.decoder_depth,
                                  config.decoder_heads)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in self.parameters() if p.requires_grad]  # the fixed decoder positions excluded
        return {"main": torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay,
                                          betas=(0.9, 0.95))}

    def predict(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` -> ``(pred (B, N, p*p*C), mask (B, N))`` with a mask drawn from ``generator``."""
        encoder: VisionTransformer = self.encoder  # type: ignore[assignment]
        grid = encoder.patch_grid(x.shape[2], x.shape[3])
        keep, mask, restore = random_masking(x.shape[0], grid[0] * grid[1], self.config.mask_ratio, generator,
                                             device=x.device)
        tokens, _ = encoder.tokens(x, keep=keep)
        return self.decoder(encoder.norm(tokens), restore, grid), mask

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        x = batch["image"]
        if cfg.augment == "crop":
            x = augment.random_resized_crop(x, generator, scale=(0.2, 1.0))
        if cfg.augment in ("crop", "dihedral"):
            x = augment.dihedral(x, generator)
        pred, mask = self.predict(x, generator)
        return mae_loss(pred, x, mask, self.encoder.patch_size, cfg.norm_pix), {}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For figures: ``(masked input, reconstruction, hidden)``: the first two ``(B, C, H', W')``
        (hidden patches zero in the first; predicted, on the true patch statistics, in the second),
        ``hidden`` ``(B, H', W')`` bool, the pixels of the hidden patches."""
        pred, mask = self.predict(x, generator)
        p = self.encoder.patch_size
        full = reconstruction(pred, x, mask, p, self.config.norm_pix)
        hidden = mask[:, :, None].expand(-1, -1, p * p).contiguous()
        hidden = unpatchify(hidden, p, (x.shape[2] // p, x.shape[3] // p), 1)[:, 0] > 0.5
        visible = x[:, :, :full.shape[2], :full.shape[3]].float() * ~hidden[:, None]
        return visible, full, hidden

    def reconstruction_figure(self, x: torch.Tensor, path: Path, seed: int = 0, title: str = "",
                              captions: list[str] | None = None) -> Path:
        """The figure of :meth:`reconstruct` on ``x`` ``(N, C, H, W)`` (masks drawn from ``seed``)."""
        was_training = self.training
        self.eval()
        try:
            visible, full, hidden = self.reconstruct(x.float(), torch.Generator().manual_seed(seed))
        finally:
            self.train(was_training)
        h, w = full.shape[2:]
        return reconstruction_figure(x[:, :, :h, :w].float().numpy(), visible.numpy(), full.numpy(),
                                     hidden.numpy(), path, title=title, captions=captions)

    def figures(self, dataset: Any, directory: Path, seed: int) -> list[Path]:
        """Reconstructions of 6 training images drawn with ``seed``."""
        rows = sample_rows(len(dataset), 6, seed)
        x = torch.stack([dataset[int(i)]["image"] for i in rows])
        return [self.reconstruction_figure(x, directory / f"{FIGURE_PREFIX}{self.name}.png", seed,
                                           f"{self.name}, mask ratio {self.config.mask_ratio}",
                                           [f"pool image {int(i)}" for i in rows])]

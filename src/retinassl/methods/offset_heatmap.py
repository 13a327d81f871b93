"""Patch-offset regression as a heatmap (Blendowski, Nickisch & Heinrich, MICCAI 2019, "How to
Learn from Unlabeled Volume Data: Self-supervised 3D Context Feature Learning"), in 2D.

"In this work, we propose a new approach to train effective convolutional feature extractors based
on a new concept of image-intrinsic spatial offset relations with an auxiliary heatmap regression
loss." A reference patch and a query patch whose centre is shifted by a random in-plane offset
``(dx, dy)`` are embedded by the same encoder; from the two embeddings the network predicts a
``K x K`` heatmap over the range of possible offsets, regressed onto a Gaussian centred on the true
offset (mean squared error; optionally a softmax cross-entropy, see ``criterion``). The paper found a heatmap easier to learn than regressing ``(dx, dy)``
directly. (The paper works on pseudo-3D CT patches a fixed distance apart across slices with the
in-plane offset to be found; a fundus image has no third axis, so here both patches lie in the
image plane and overlap partly.)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from retinassl.methods.base import register_method
from retinassl.models import Encoder
from retinassl.methods.pretext_base import PretextConfig, PretextMethod
from retinassl.methods.crops import crop_patches, random_centres
from retinassl.models.pretext_nets import mlp


class OffsetHeatmapConfig(PretextConfig):
    """Offset-heatmap settings (plus the optimiser settings of :class:`PretextConfig`).

    Attributes:
        patch_fraction: side of a patch as a fraction of the image side (at most 0.5 with
            ``max_offset`` 0.5). Large patches carry enough vessels to be registered: on 128-pixel
            fundus images 0.4 learned within 300 steps where 0.25 and 0.15 stayed near chance.
        max_offset: largest ``|dx|`` and ``|dy|`` as a fraction of the patch side (offsets are
            uniform in the square ``[-max_offset, max_offset]^2``).
        patch_size: side (pixels) of the patches fed to the encoder (crops are resampled).
        heatmap_size: cells per side of the predicted heatmap (odd, so that offset 0 is a cell).
        sigma: standard deviation of the target Gaussian, in heatmap cells.
        hidden: hidden units of the MLP that outputs the heatmap.
        criterion: ``mse`` (L2 regression of the Gaussian, peak 1) or ``softmax`` (the heatmap
            as a spatial softmax, cross-entropy against the Gaussian normalised to sum 1: a KL
            divergence between heatmaps; it learned a toy version of the task that ``mse`` did not
            start on within 300 steps).
    """

    patch_fraction: float = Field(0.4, gt=0, lt=1)
    max_offset: float = Field(0.5, gt=0)
    patch_size: int = Field(64, ge=8)
    heatmap_size: int = Field(9, ge=3)
    sigma: float = Field(1.0, gt=0)
    hidden: int = Field(512, ge=1)
    criterion: Literal["mse", "softmax"] = "mse"


def gaussian_heatmaps(offsets: torch.Tensor, max_offset: float, size: int, sigma: float) -> torch.Tensor:
    """Target heatmaps ``(B, size, size)`` (row = dy, column = dx; peak 1) for ``offsets``
    ``(B, 2)`` as ``(dx, dy)``, over cells spanning ``[-max_offset, max_offset]`` evenly;
    ``sigma`` is in cells."""
    cells = torch.linspace(-max_offset, max_offset, size, dtype=torch.float32)
    spacing = 2 * max_offset / (size - 1)
    dx = cells[None, None, :] - offsets[:, 0, None, None]
    dy = cells[None, :, None] - offsets[:, 1, None, None]
    return torch.exp(-(dx ** 2 + dy ** 2) / (2 * (sigma * spacing) ** 2))


def heatmap_argmax(heatmaps: torch.Tensor, max_offset: float) -> torch.Tensor:
    """The ``(dx, dy)`` of the highest cell of each heatmap ``(B, K, K)`` -> ``(B, 2)``."""
    b, k, _ = heatmaps.shape
    index = heatmaps.reshape(b, -1).argmax(1)
    cells = torch.linspace(-max_offset, max_offset, k, device=heatmaps.device)
    return torch.stack([cells[index % k], cells[index // k]], 1)


@register_method
class OffsetHeatmap(PretextMethod):
    """Siamese encoder + MLP over the two concatenated embeddings -> ``(K, K)`` offset heatmap.

    Batch: ``image`` ``(B, C, H, W)``. Logged: ``offset_error`` (distance between the heatmap's
    highest cell and the true offset, in patch sides).
    """

    name = "offset_heatmap"
    Config = OffsetHeatmapConfig

    def __init__(self, config: OffsetHeatmapConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if config.heatmap_size % 2 == 0:
            raise ValueError(f"heatmap_size must be odd, got {config.heatmap_size}")
        self.head = mlp(2 * encoder.num_features, config.hidden, config.heatmap_size ** 2)

    def forward(self, reference: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Two ``(B, C, p, p)`` patch batches -> heatmaps ``(B, K, K)``."""
        embeddings = self.encoder(torch.cat([reference, query]))
        b = reference.shape[0]
        k = self.config.heatmap_size
        return self.head(torch.cat([embeddings[:b], embeddings[b:]], 1)).view(b, k, k)

    def make_pairs(self, x: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reference patches, query patches, offsets ``(B, 2)`` in patch sides) for ``x``."""
        cfg = self.config
        b, _, h, w = x.shape
        side = cfg.patch_fraction * min(h, w)
        reach = cfg.max_offset * side
        margin = side / 2 + reach
        if 2 * margin > min(h, w):
            raise ValueError(f"{side:.1f}-pixel patches shifted by up to {reach:.1f} pixels do not "
                             f"fit a {h}x{w} image; lower patch_fraction or max_offset")
        centre = random_centres(b, h, w, margin, generator)
        offsets = (torch.rand(b, 2, generator=generator) * 2 - 1) * cfg.max_offset
        reference = crop_patches(x, centre, side, cfg.patch_size)
        query = crop_patches(x, centre + offsets * side, side, cfg.patch_size)
        return reference, query, offsets

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        reference, query, offsets = self.make_pairs(batch["image"], generator)
        predicted = self.forward(reference, query).float()
        target = gaussian_heatmaps(offsets, cfg.max_offset, cfg.heatmap_size, cfg.sigma).to(predicted.device)
        error = (heatmap_argmax(predicted.detach(), cfg.max_offset).cpu() - offsets).norm(dim=1).mean()
        if cfg.criterion == "mse":
            loss = F.mse_loss(predicted, target)
        else:
            soft = target.flatten(1) / target.flatten(1).sum(1, keepdim=True)
            loss = -(soft * F.log_softmax(predicted.flatten(1), 1)).sum(1).mean()
        return loss, {"offset_error": float(error)}

"""Relative patch position (Doersch, Gupta & Efros, ICCV 2015, "Unsupervised Visual Representation
Learning by Context Prediction").

"Given only a large, unlabeled image collection, we extract random pairs of patches from each image
and train a convolutional neural net to predict the position of the second patch relative to the
first." The second patch is one of the 8 neighbours of the first in a 3x3 grid (an 8-way
classification). As in the paper, the patches are separated by a gap (about half a patch) and each
is jittered independently, so that the network cannot match continuing lines or textures across
touching edges; optional colour dropping (keep one random channel of each patch, replace the
other two by faint Gaussian noise) removes the chromatic-aberration shortcut the paper found.

Both patches go through the same encoder (pooled embeddings); their concatenation feeds an MLP
with 8 outputs, the paper's late-fusion design.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from retinassl.methods.base import register_method
from retinassl.models import Encoder
from retinassl.methods.pretext_base import PretextConfig, PretextMethod
from retinassl.methods.crops import crop_patches, random_centres
from retinassl.models.pretext_nets import mlp

#: The 8 neighbour positions (dx, dy) in grid units, in class order: top-left, top, top-right,
#: left, right, bottom-left, bottom, bottom-right (image y grows downwards).
NEIGHBOURS: tuple[tuple[int, int], ...] = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1),
                                           (0, 1), (1, 1))


class RelativePositionConfig(PretextConfig):
    """Relative-position settings (plus the optimiser settings of :class:`PretextConfig`).

    Attributes:
        patch_fraction: side of a patch as a fraction of the image side.
        gap: gap between neighbouring patches as a fraction of the patch side (about 0.5 in the
            paper).
        jitter: maximum random shift of each patch along each axis, as a fraction of the patch
            side (0.075: the paper's 7 pixels on 96-pixel patches).
        patch_size: side (pixels) of the patches fed to the encoder (crops are resampled).
        color_dropping: keep one random colour channel per patch, replace the others with
            Gaussian noise of 1/100 of its standard deviation (3-channel images).
        hidden: hidden units of the classifier MLP.
    """

    patch_fraction: float = Field(0.18, gt=0, lt=1)
    gap: float = Field(0.5, ge=0)
    jitter: float = Field(0.075, ge=0)
    patch_size: int = Field(64, ge=8)
    color_dropping: bool = False
    hidden: int = Field(512, ge=1)


def color_drop(patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keep one random channel of each ``(N, 3, h, w)`` patch; replace the other two with Gaussian
    noise whose standard deviation is 1/100 of the kept channel's."""
    n, c = patches.shape[:2]
    keep = torch.randint(0, c, (n,), generator=generator).to(patches.device)
    noise = torch.randn(patches.shape, generator=generator).to(patches)
    kept = patches[torch.arange(n, device=patches.device), keep]  # (N, h, w)
    scale = kept.flatten(1).std(1).view(n, 1, 1, 1) / 100
    mask = F.one_hot(keep, c).to(patches).view(n, c, 1, 1)
    return patches * mask + noise * scale * (1 - mask)


@register_method
class RelativePosition(PretextMethod):
    """Siamese encoder + MLP over the two concatenated patch embeddings -> 8 position logits.

    Batch: ``image`` ``(B, C, H, W)``. Logged: ``position_accuracy``.
    """

    name = "relative_position"
    Config = RelativePositionConfig

    def __init__(self, config: RelativePositionConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.head = mlp(2 * encoder.num_features, config.hidden, len(NEIGHBOURS))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Two ``(B, C, p, p)`` patch batches -> ``(B, 8)`` logits for the second's position."""
        embeddings = self.encoder(torch.cat([first, second]))
        b = first.shape[0]
        return self.head(torch.cat([embeddings[:b], embeddings[b:]], 1))

    def make_pairs(self, x: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cut (centre patch, neighbour patch, class) for each image of ``(B, C, H, W)``."""
        cfg = self.config
        b, _, h, w = x.shape
        side = cfg.patch_fraction * min(h, w)
        pitch = side * (1 + cfg.gap)
        jitter = cfg.jitter * side
        margin = pitch + side / 2 + jitter
        if 2 * margin > min(h, w):
            raise ValueError(f"a 3x3 grid of {side:.1f}-pixel patches with gap {cfg.gap} and jitter "
                             f"{cfg.jitter} does not fit a {h}x{w} image; lower patch_fraction")
        centre = random_centres(b, h, w, margin, generator)
        labels = torch.randint(0, len(NEIGHBOURS), (b,), generator=generator)
        step = torch.tensor(NEIGHBOURS, dtype=torch.float32)[labels] * pitch
        shake = (torch.rand(2, b, 2, generator=generator) * 2 - 1) * jitter
        first = crop_patches(x, centre + shake[0], side, cfg.patch_size)
        second = crop_patches(x, centre + step + shake[1], side, cfg.patch_size)
        if cfg.color_dropping and x.shape[1] == 3:
            first, second = color_drop(first, generator), color_drop(second, generator)
        return first, second, labels.to(x.device)

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        first, second, labels = self.make_pairs(batch["image"], generator)
        logits = self.forward(first, second).float()
        accuracy = (logits.argmax(1) == labels).float().mean()
        return F.cross_entropy(logits, labels), {"position_accuracy": float(accuracy)}

"""Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018, "Unsupervised Representation
Learning by Predicting Image Rotations").

"In our work we propose to learn image features by training ConvNets to recognize the 2d rotation
that is applied to the image that it gets as input." The rotations are 0, 90, 180 and 270 degrees
(a 4-way classification), and by default each image is fed in all four rotations in the same batch,
as the paper found best.

Fundus-specific detail: a preprocessed fundus image is a disc whose top and bottom are often cut
flat by the camera, and that outline alone tells 0/180 from 90/270 degrees. The image is therefore
multiplied by its inscribed circle before rotating (``circle_mask``), so that all four rotations
share the same outline. A light random crop and colour jitter (``augment``) keep the network from
memorising single images.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from retinassl.data import augment
from retinassl.methods.base import register_method
from retinassl.models import Encoder
from retinassl.models.heads import LinearHead
from retinassl.methods.pretext_base import PretextConfig, PretextMethod
from retinassl.methods.crops import inscribed_circle


class RotationConfig(PretextConfig):
    """Rotation prediction settings (plus the optimiser settings of :class:`PretextConfig`).

    Attributes:
        copies: ``all`` (every image in all 4 rotations: the batch grows 4x, as in the paper) or
            ``random`` (one random rotation per image).
        circle_mask: zero everything outside the inscribed circle before rotating (removes the
            field-of-view outline as a cue).
        augment: ``light`` (random resized crop of 60-100 % of the area, brightness/contrast/
            saturation jitter of 10 %) or ``none``.
        hflip: also flip half of the images horizontally (left and right eyes are mirror images;
            off by default because it makes 0 and 180 degrees harder to tell apart).
    """

    copies: Literal["all", "random"] = "all"
    circle_mask: bool = True
    augment: Literal["none", "light"] = "light"
    hflip: bool = False


def rotate_batch(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x`` ``(B, C, H, W)`` by ``quarter_turns[i] * 90`` degrees
    (counter-clockwise); square images only."""
    out = torch.empty_like(x)
    for k in range(4):
        rows = torch.nonzero(quarter_turns == k).flatten()
        if len(rows):
            out[rows] = torch.rot90(x[rows], k, dims=(-2, -1))
    return out


@register_method
class RotationPrediction(PretextMethod):
    """Encoder + linear 4-way head on the pooled embedding; cross-entropy on the rotation.

    Batch: ``image`` ``(B, C, H, W)`` with ``H == W``. Logged: ``rotation_accuracy``.
    """

    name = "rotation"
    Config = RotationConfig

    def __init__(self, config: RotationConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.head = LinearHead(encoder.num_features, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> rotation logits ``(B, 4)``."""
        return self.head(self.encoder(x))

    def make_inputs(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment and rotate a batch: returns (rotated images ``(N, C, H, W)``, labels ``(N,)``)."""
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotation prediction needs square images, got {tuple(x.shape[-2:])}")
        cfg = self.config
        if cfg.augment == "light":
            x = augment.random_resized_crop(x, generator, scale=(0.6, 1.0))
            x = augment.color_jitter(x, generator, 0.1, 0.1, 0.1)
        if cfg.hflip:
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        if cfg.circle_mask:
            x = x * inscribed_circle(x.shape[-2], x.shape[-1], x.device, x.dtype)
        b = x.shape[0]
        if cfg.copies == "all":
            labels = torch.arange(4).repeat_interleave(b)
            rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
        else:
            labels = torch.randint(0, 4, (b,), generator=generator)
            rotated = rotate_batch(x, labels.to(x.device))
        return rotated, labels.to(x.device)

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, labels = self.make_inputs(batch["image"], generator)
        logits = self.forward(inputs).float()
        accuracy = (logits.argmax(1) == labels).float().mean()
        return F.cross_entropy(logits, labels), {"rotation_accuracy": float(accuracy)}

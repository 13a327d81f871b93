"""What the self-supervised pretext methods share: optimiser settings, the warm-up + cosine learning
rate schedule, and a base class that trains every parameter of the method with one AdamW.

A pretext method is a :class:`~retinassl.methods.base.Method` whose labels come from the images
themselves; its encoder is the product, and the heads it adds (classifiers, decoders, projection
heads) are discarded after pretraining.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from retinassl.config import Section
from retinassl.methods.base import Method


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float = 0.05,
                  warmup_steps: int | None = None) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_fraction`` of the run (at least one
    step), or over exactly ``warmup_steps`` steps when given (0: none), then a cosine decay from 1
    to 0 at ``total_steps``. During the warm-up, step ``s`` (0-based) gets ``(s + 1) / warmup``."""
    warmup = max(1, int(warmup_fraction * total_steps)) if warmup_steps is None else warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class PretextConfig(Section):
    """Optimiser settings common to every pretext method.

    Attributes:
        lr: AdamW learning rate (peak, after warm-up).
        weight_decay: AdamW weight decay.
        schedule: ``cosine`` (linear warm-up over ``warmup`` of the run, then cosine decay to 0)
            or ``constant``.
        warmup: fraction of the run used for the linear warm-up (cosine schedule only).
    """

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup: float = Field(0.05, ge=0, lt=1)


class PretextMethod(Method):
    """A method that trains all its parameters (encoder and heads) with one AdamW (group ``main``)."""

    config: PretextConfig

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in self.parameters() if p.requires_grad]
        return {"main": torch.optim.AdamW(params, lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)}

    def lr_factor(self, step: int, total_steps: int) -> float:
        if self.config.schedule == "constant":
            return 1.0
        return warmup_cosine(step, total_steps, self.config.warmup)

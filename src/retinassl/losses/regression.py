"""Masked regression and reconstruction losses as plain functions of tensors (the cross-modal
thickness map, in-painting)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                           kind: str = "l1", delta: float = 1.0) -> torch.Tensor:
    """Mean loss over the pixels where ``mask`` is 1 (0 when no pixel is).

    Args:
        pred, target, mask: ``(B, 1, H, W)``.
        kind: ``l1``, ``mse`` or ``huber`` (with ``delta``).
    """
    if kind == "l1":
        err = (pred - target).abs()
    elif kind == "mse":
        err = (pred - target) ** 2
    elif kind == "huber":
        err = F.huber_loss(pred, target, reduction="none", delta=delta)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    weight = mask.sum()
    return (err * mask).sum() / weight.clamp(min=1.0)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the pixels where ``mask`` ``(B, 1, H, W)`` is 1 (all channels)."""
    squared = (prediction.float() - target.float()) ** 2 * mask
    return squared.sum() / (mask.sum() * prediction.shape[1]).clamp_min(1)

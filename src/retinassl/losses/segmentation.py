"""Segmentation losses as plain functions of tensors (MONAI's losses are used where they fit: the
vessel method builds DiceLoss / DiceCELoss / SoftDiceclDiceLoss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes, ignoring pixels labelled :data:`IGNORE_LABEL`.

    Args:
        logits: ``(B, C, H, W)``.
        labels: ``(B, H, W)`` int64 in ``0..C-1`` or -1.
    """
    probs = torch.softmax(logits.float(), dim=1)
    valid = (labels >= 0).unsqueeze(1).float()
    onehot = F.one_hot(labels.clamp(min=0), probs.shape[1]).permute(0, 3, 1, 2).float() * valid
    probs = probs * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()

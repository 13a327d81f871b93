"""Patch logits of whole images from a patch dataset (their image score: :mod:`retinassl.metrics.image_score`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from retinassl.data.datasets import PatchDataset


@torch.no_grad()
def predict_patch_logits(model: Callable[[torch.Tensor], torch.Tensor], patches: PatchDataset,
                         batch_size: int = 256) -> np.ndarray:
    """Logits of every patch, ``(n_images, grid * grid)`` in the dataset's row order.

    Args:
        model: ``(B, C, h, w)`` -> ``(B,)`` patch logits (in eval mode).
        patches: the patch dataset (all patches of each of its images).
    """
    loader = DataLoader(patches, batch_size=batch_size, shuffle=False)
    out = []
    for batch in loader:
        out.append(model(batch["image"]).float().reshape(-1).cpu())
    per_image = patches.grid * patches.grid
    return torch.cat(out).numpy().reshape(-1, per_image) if out else np.zeros((0, per_image))

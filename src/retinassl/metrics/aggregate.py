"""Patch predictions over whole images and their aggregation into an image score.

Lecouat et al. 2018: "we ... pooled these patch-level predictions to form an image-level
abnormality score: score_i = sum_{j=1}^{64} sigma(l_ij) where l_ij is the classifier logit of patch j
in image i. If the image-level abnormality score exceeds a threshold, the classifier predicts that
the image is diseased."
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from retinassl.data.datasets import PatchDataset


def image_scores(patch_logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(N, P)`` patch logits -> ``(N,)`` image scores ``sum_j sigmoid(l_j)``."""
    logits = torch.as_tensor(np.asarray(patch_logits), dtype=torch.float64)
    return torch.sigmoid(logits).sum(dim=1).numpy()


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

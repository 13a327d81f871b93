"""How a patch classifier's logits make an image's score (numpy only: importable without torch).

Lecouat et al. 2018: "we ... pooled these patch-level predictions to form an image-level
abnormality score: score_i = sum_{j=1}^{64} sigma(l_ij) where l_ij is the classifier logit of patch j
in image i. If the image-level abnormality score exceeds a threshold, the classifier predicts that
the image is diseased."

That sum (rule ``sum``, the default) also counts the cells of the black border and of the field of
view's rim, and how many of them an image has depends on the camera; across cameras those cells
carry the acquisition more than the disease (``benchmarks/results/mx_patch_inversion.md``). Rule
``tissue`` scores an image by the mean probability of its cells lying wholly inside the field of view
(at least :data:`TISSUE_SHARE` of the cell's pixels), so that neither the border, the rim nor the
field of view's size enters the score.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from scipy.special import expit

ImageScore = Literal["sum", "tissue"]
IMAGE_SCORES: tuple[str, ...] = get_args(ImageScore)
TISSUE_SHARE = 0.99


def image_scores(patch_logits: np.ndarray, rule: ImageScore = "sum",
                 cell_fov: np.ndarray | None = None) -> np.ndarray:
    """``(N, P)`` patch logits -> ``(N,)`` image scores.

    Args:
        patch_logits: ``(N, P)`` logits of each image's grid cells.
        rule: ``sum``: ``sum_j sigmoid(l_j)`` over all cells (the paper); ``tissue``: the mean
            ``sigmoid(l_j)`` over the cells at least :data:`TISSUE_SHARE` inside the field of view
            (an image with no such cell: over its cells within :data:`TISSUE_SHARE` of its largest
            share).
        cell_fov: ``(N, P)`` (or flat ``(N * P,)``, image-major) fraction of each cell inside its
            image's field of view (``tissue``).
    """
    probs = expit(np.asarray(patch_logits, dtype=np.float64))
    if rule == "sum":
        return probs.sum(axis=1)
    if rule != "tissue":
        raise ValueError(f"image score rule {rule!r}: expected one of {', '.join(IMAGE_SCORES)}")
    if cell_fov is None:
        raise ValueError("the 'tissue' image score needs each cell's field-of-view fraction")
    share = np.asarray(cell_fov, dtype=np.float64)
    if share.shape not in (probs.shape, (probs.size,)):
        raise ValueError(f"cell_fov has shape {share.shape}; expected {probs.shape} (images x cells) "
                         f"or ({probs.size},)")
    share = share.reshape(probs.shape)
    tissue = share >= TISSUE_SHARE
    none = ~tissue.any(axis=1)
    tissue[none] = share[none] >= TISSUE_SHARE * share[none].max(axis=1, keepdims=True)
    return (probs * tissue).sum(axis=1) / tissue.sum(axis=1)

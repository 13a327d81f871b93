"""Test evaluation of a patch classifier: patch-level AUC, image-level AUC of the summed patch
probabilities, localisation AUC, per-image predictions and heatmap overlays.

Lecouat et al. 2018 report "classification AUCs both at the patch and image levels" and compare
"the resulting localization masks against the ground truth annotations". Here:

- **patch AUC**: every patch of every test image, scored by its logit, against its label (the
  lesion-mask union, :mod:`retinassl.data.patch_bank`);
- **image AUC**: ``score_i = sum_j sigmoid(l_ij)`` (:func:`retinassl.metrics.image_score.image_scores`)
  against the image label (or, for a classifier whose ``image_score`` is ``tissue``, the mean
  probability of the cells wholly inside the field of view);
- **localisation AUC**: the heatmap of the paper's figures (patch probabilities spread over their
  cells and smoothed with a Gaussian of ``sigma_fraction`` of the image side, as
  :func:`retinassl.figures.heatmap.overlay` draws it) as a pixel score against the lesion mask,
  over the field-of-view pixels of the diseased test images, pooled (at ``resolution`` pixels per
  side; the mask is downsampled with any-overlap, so no microaneurysm disappears).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retinassl.data.cache import PreparedData
from retinassl.data.datasets import lesion_mask
from retinassl.data.patches import patch_values_to_image
from retinassl.metrics.classification import roc_auc
from retinassl.figures.heatmap import overlay, save_png
from retinassl.metrics.image_score import image_scores
from retinassl.models.patch_classifier import PatchClassifier, predict_cells
from retinassl.data.patch_bank import PatchBank, build_patch_bank
from retinassl.progress import track


def bank_cells(bank: PatchBank) -> torch.Tensor:
    """``(N, C, p, p)`` normalised grid cells of every patch of ``bank``."""
    m, p = bank.margin, bank.patch_size
    cells = bank.windows[:, :, m:m + p, m:m + p].float()
    image = torch.arange(len(bank)) // bank.per_image
    return cells * bank.scale[image][:, :, None, None] + bank.offset[image][:, :, None, None]


def predict_bank(classifier: torch.nn.Module, bank: PatchBank, batch_size: int = 512) -> np.ndarray:
    """Patch logits ``(n_images, grid**2)`` of every image of ``bank``."""
    logits = predict_cells(classifier, bank_cells(bank), batch_size)
    return logits.reshape(bank.n_images, bank.per_image)


def bank_image_scores(classifier: PatchClassifier, bank: PatchBank, logits: np.ndarray) -> np.ndarray:
    """``(n_images,)`` image scores of a bank's patch ``logits`` by the classifier's rule."""
    cell_fov = None if bank.fov is None else bank.fov.reshape(bank.n_images, bank.per_image)
    return image_scores(logits, classifier.image_score, cell_fov)


def score_images(classifier: PatchClassifier, prepared: PreparedData, rows: Iterable[int],
                 batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, logits)``: image scores ``(n,)`` (the classifier's rule) and patch logits
    ``(n, grid**2)`` of whole prepared images (no labels needed), cut ``batch_size`` images at a time."""
    rows = np.asarray(list(rows), dtype=int)
    grid, patch_size = classifier.grid, classifier.patch_size
    scores, logits = [], []
    for s in track(range(0, len(rows), batch_size), total=-(-len(rows) // batch_size), description="predicting"):
        bank = build_patch_bank(prepared, rows[s:s + batch_size], grid, patch_size, 0, labelled=False)
        logits.append(predict_bank(classifier, bank))
        scores.append(bank_image_scores(classifier, bank, logits[-1]))
    if not logits:
        return np.zeros(0), np.zeros((0, grid ** 2))
    return np.concatenate(scores), np.concatenate(logits)


def _downsample_any(mask: np.ndarray, resolution: int) -> np.ndarray:
    size = mask.shape[0]
    if size % resolution:
        raise ValueError(f"mask size {size} is not a multiple of {resolution}")
    f = size // resolution
    return np.asarray(mask, dtype=bool).reshape(resolution, f, resolution, f).any(axis=(1, 3))


def _downsample_mean(mask: np.ndarray, resolution: int) -> np.ndarray:
    f = mask.shape[0] // resolution
    return np.asarray(mask, dtype=np.float32).reshape(resolution, f, resolution, f).mean(axis=(1, 3)) > 0.5


def localisation_auc(prepared: PreparedData, rows: np.ndarray, patch_logits: np.ndarray,
                     resolution: int = 128, sigma_fraction: float = 0.03) -> float:
    """Pixel AUC of the smoothed patch heatmaps against the lesion masks (see the module docstring).

    Args:
        prepared: cached images with lesion masks and FOV.
        rows: ``(n,)`` rows of the images (the diseased test images).
        patch_logits: ``(n, grid**2)`` logits of their patches.
        resolution: side at which heatmap and mask are compared (must divide the image size).
        sigma_fraction: Gaussian blur sigma as a fraction of the side.
    """
    if len(rows) == 0:
        return float("nan")
    grid = int(round(np.sqrt(patch_logits.shape[1])))
    scores, labels = [], []
    for row, logits in zip(rows, patch_logits):
        probs = 1 / (1 + np.exp(-logits.reshape(grid, grid).astype(np.float64)))
        heat = patch_values_to_image(probs, resolution, resolution, sigma=sigma_fraction * resolution)
        mask = _downsample_any(lesion_mask(prepared, int(row)), resolution)
        fov = _downsample_mean(prepared.entries[int(row)].fov(), resolution)
        scores.append(heat[fov])
        labels.append(mask[fov])
    return roc_auc(np.concatenate(labels), np.concatenate(scores))


def evaluate_bank(classifier: PatchClassifier, bank: PatchBank, prepared: PreparedData,
                  image_labels: np.ndarray, ids: np.ndarray,
                  localisation: bool = True) -> tuple[dict[str, float], pd.DataFrame]:
    """Test metrics of ``classifier`` on the images of a labelled ``bank``.

    Args:
        classifier: patch classifier (``(B, C, p, p)`` -> ``(B,)`` logits), eval mode; its
            ``image_score`` rule makes the image scores.
        bank: labelled bank of the test images (its cells are what the classifier sees).
        prepared: the prepared data the bank's rows index (for masks and FOV).
        image_labels: ``(n_images,)`` 0/1.
        ids: ``(n_images,)`` image ids for the predictions table.

    Returns:
        ``({"patch_auc", "image_auc", "localisation_auc"}, predictions)`` where ``predictions`` has
        ``id, label, score`` and the logits ``patch_00 ..`` of every image.
    """
    logits = predict_bank(classifier, bank)
    scores = bank_image_scores(classifier, bank, logits)
    image_labels = np.asarray(image_labels).astype(int)
    metrics = {"patch_auc": roc_auc(bank.labels, logits.reshape(-1)),
               "image_auc": roc_auc(image_labels, scores)}
    if localisation:
        diseased = image_labels == 1
        metrics["localisation_auc"] = localisation_auc(prepared, bank.rows[diseased], logits[diseased])
    table = pd.DataFrame({"id": ids, "label": image_labels, "score": scores})
    patches = pd.DataFrame(logits, columns=[f"patch_{j:02d}" for j in range(logits.shape[1])])
    return metrics, pd.concat([table, patches], axis=1)


def patch_logits_of(predictions: pd.DataFrame) -> np.ndarray:
    """``(n, grid**2)`` logits from a predictions table."""
    return predictions[[c for c in predictions.columns if c.startswith("patch_")]].to_numpy(float)


def write_heatmaps(prepared: PreparedData, rows: np.ndarray, predictions: pd.DataFrame,
                   folder: Path, prefix: str) -> list[Path]:
    """One overlay PNG per image: ``<folder>/<prefix><id>.png`` (patch probabilities, Gaussian
    blur, lesion mask outlined)."""
    logits = patch_logits_of(predictions)
    grid = int(round(np.sqrt(logits.shape[1])))
    paths = []
    for row, ident, values in zip(rows, predictions["id"], logits):
        probs = 1 / (1 + np.exp(-values.reshape(grid, grid)))
        image = np.asarray(prepared.entries[int(row)].image())
        art = overlay(image, probs, mask=lesion_mask(prepared, int(row)))
        paths.append(save_png(folder / f"{prefix}{ident}.png", art))
    return paths

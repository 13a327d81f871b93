"""Vessel-segmentation metrics inside the field of view, as plain functions of arrays.

Every pixel outside the FOV mask is ignored, as in the DRIVE benchmark ("the performance is
measured ... only for pixels inside the FOV", Staal et al. 2004). A binary map is compared with the
truth through the four confusion counts; Dice (= F1), sensitivity (recall), specificity, accuracy
and precision follow from the counts, so per-image counts can be summed into dataset-level
("pooled") values and resampled over images for bootstrap intervals. Undefined ratios (0/0) are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from retinassl.metrics.classification import roc_auc
from retinassl.metrics.stats import bootstrap_ci

COUNT_NAMES: tuple[str, ...] = ("tp", "fp", "fn", "tn")
BINARY_METRICS: tuple[str, ...] = ("dice", "sensitivity", "specificity", "accuracy", "precision")


def _check(arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
    shapes = {n: np.shape(a) for n, a in zip(names, arrays)}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"arrays differ in shape: {shapes}")


def confusion_counts(pred: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """``[tp, fp, fn, tn]`` (int64) of a binary prediction inside ``fov`` (all pixels when None).

    Args:
        pred, truth, fov: ``(H, W)`` arrays, nonzero = positive / inside.
    """
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    fov = np.ones_like(truth) if fov is None else np.asarray(fov, dtype=bool)
    _check([pred, truth, fov], ["pred", "truth", "fov"])
    p, t = pred[fov], truth[fov]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return np.array([tp, fp, fn, len(p) - tp - fp - fn], dtype=np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def metrics_from_counts(counts: np.ndarray) -> dict[str, float]:
    """Dice/F1, sensitivity, specificity, accuracy, precision from ``[tp, fp, fn, tn]``
    (``(4,)``; or ``(N, 4)``, summed over rows first: the pooled value)."""
    c = np.asarray(counts, dtype=np.int64)
    tp, fp, fn, tn = (c.reshape(-1, 4).sum(axis=0)).tolist()
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
            "precision": _ratio(tp, tp + fp)}


def segmentation_metrics(prob: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None,
                         threshold: float = 0.5) -> dict[str, float]:
    """Metrics of one probability map inside the FOV.

    Args:
        prob: ``(H, W)`` vessel probabilities in [0, 1].
        truth: ``(H, W)`` bool ground truth.
        fov: ``(H, W)`` bool field of view (None: every pixel).
        threshold: ``prob >= threshold`` is a vessel.

    Returns:
        ``dice``, ``sensitivity``, ``specificity``, ``accuracy``, ``precision`` and ``auc`` (pixel
        ROC AUC of ``prob`` inside the FOV).
    """
    prob = np.asarray(prob, dtype=np.float32)
    truth = np.asarray(truth, dtype=bool)
    inside = np.ones_like(truth) if fov is None else np.asarray(fov, dtype=bool)
    _check([prob, truth, inside], ["prob", "truth", "fov"])
    out = metrics_from_counts(confusion_counts(prob >= threshold, truth, inside))
    out["auc"] = roc_auc(truth[inside], prob[inside])
    return out


def bootstrap_over_images(counts: np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                          seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the pooled binary metrics, resampling whole images.

    Args:
        counts: ``(N, 4)`` per-image ``[tp, fp, fn, tn]``.

    Returns:
        metric name -> (low, high) of :func:`metrics_from_counts` over resampled image sets.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    images = np.arange(len(counts))
    out = {}
    for name in BINARY_METRICS:
        out[name] = bootstrap_ci(images, images, lambda idx, _, n=name: metrics_from_counts(counts[idx])[n],
                                 n_boot=n_boot, alpha=alpha, seed=seed, stratified=False)
    return out


def bootstrap_mean(values: np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image values (e.g. per-image AUC)."""
    values = np.asarray(values, dtype=float)
    images = np.arange(len(values))
    return bootstrap_ci(images, images, lambda idx, _: float(np.nanmean(values[idx])), n_boot=n_boot,
                        alpha=alpha, seed=seed, stratified=False)


def region_dice(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard Dice per class ``(C,)`` of predicted labels vs labels (ignored pixels excluded); NaN for a
    class absent from both."""
    valid = labels >= 0
    out = torch.full((num_classes,), float("nan"))
    for c in range(num_classes):
        p, t = (pred == c) & valid, (labels == c) & valid
        denom = p.sum() + t.sum()
        if denom > 0:
            out[c] = 2.0 * (p & t).sum() / denom
    return out

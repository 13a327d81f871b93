"""The one 95 % interval of every comparison table: a two-level percentile bootstrap over seeds and
test images.

A table cell is the mean over ``S`` seeds (label subsets / training runs) of a metric that each seed
measured on the same test images. Its uncertainty has two sources: which seeds were drawn (the
seed-to-seed spread of the trained classifiers) and which test images were drawn (the test set is a
sample too; the only source left when every seed trains on the same images, e.g. at 100 % of the
labels). Each bootstrap replicate draws both, jointly:

1. ``S - 1`` of the ``S`` seeds with replacement (see below; one seed: that seed);
2. the test images with replacement *within each class* (stratified: every replicate keeps the class
   counts, so an AUC stays defined), the **same** images for every seed (the seeds share the test
   set, so their errors on a hard image are correlated and must move together);

then recomputes each drawn seed's metric on the drawn images and averages over the drawn seeds. The
interval is the 2.5 and 97.5 percentiles of the replicates (the percentile interval of Efron &
Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13). Resampling both levels of a two-level
design follows Davison & Hinkley 1997 ("Bootstrap Methods and their Application", sec. 3.8); here
the test images are crossed with the seeds rather than nested in them, hence one image draw shared
by all seeds.

Why ``S - 1`` seeds: the mean of ``m`` draws from ``S`` values has bootstrap variance
``(S - 1) / S * s^2 / m`` (``s^2`` the sample variance), so ``m = S`` under-states the seed level's
variance by ``(S - 1) / S`` (20 % with 5 seeds, 33 % with 3), while ``m = S - 1`` gives exactly the
unbiased ``s^2 / S`` (the ``n - 1`` resample size of McCarthy & Snowden 1985 and Rao & Wu 1988 for
small strata). In the simulation of ``tests/metrics/test_intervals.py`` this raised the coverage with 3 seeds
and a large seed spread from 0.87-0.92 to 0.89-0.93 and left the test-set-only case at 0.96.

Properties: every replicate is an average of the metric's own values, so the interval lies inside
the metric's range (AUC in [0, 1], quadratic kappa in its range) by construction; it has non-zero
width when all seeds agree (test-image resampling); with one seed it *is* the stratified image
bootstrap, an interval for that trained model's metric (one seed cannot show the seed-to-seed
spread); the same ``seed`` gives the same interval. With k-fold cross-validation a seed's metric is
the mean over its folds (as in the results table), each fold scored on its own drawn images.

Speed: a resample is a ``(B, N)`` matrix of image counts and the metrics are computed on the counts
as weights, vectorised over the ``B`` replicates (AUC from sorted cumulative weights, kappa and
accuracy from weighted confusion matrices); other metrics fall back to a loop over replicates.

Known limits (measured, see ``tests/metrics/test_intervals.py``): with few seeds *and* a seed-to-seed spread
larger than the test-set spread the percentiles are normal-like rather than Student-t-like, so the
interval is narrower than nominal (coverage 0.89 with 3 seeds and a seed AUC sd of about 0.1); the
image level re-counts the seed x image noise already in the seed spread, so with no seed effect it
is slightly wide (0.96).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

METHOD = "bootstrap over seeds and test images"
METHOD_SENTENCE = ("95 % intervals: percentile bootstrap over seeds and test images (2,000 replicates, each "
                   "resampling n - 1 of the n seeds and, for all seeds alike, the test images within each "
                   "class; each seed's metric recomputed on the resampled images and averaged over the "
                   "resampled seeds; with one seed, a bootstrap over test images alone)")
FAST_METRICS = ("auc", "auc_macro", "kappa", "accuracy")


def image_counts(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, N)`` how often each image is drawn (float): ``N`` draws with replacement, class by
    class (each stratum keeps its size)."""
    strata = np.asarray(strata)
    counts = np.zeros((n_boot, len(strata)))
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        size = len(members)
        drawn = rng.integers(0, size, size=(n_boot, size)) + size * np.arange(n_boot)[:, None]
        counts[:, members] = np.bincount(drawn.ravel(), minlength=n_boot * size).reshape(n_boot, size)
    return counts


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B,)`` AUCs of one classifier under ``B`` weightings of its cases (a weight = how often the
    case was drawn; ties count one half), NaN where a class has zero weight.

    Args:
        labels: ``(N,)`` 0/1. scores: ``(N,)``. weights: ``(B, N)`` non-negative.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    weights = np.asarray(weights, dtype=float)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    negatives = negatives[np.argsort(scores[negatives], kind="mergesort")]
    cumulative = np.empty((len(weights), len(negatives) + 1))  # weight of negatives up to a rank
    cumulative[:, 0] = 0
    np.cumsum(weights[:, negatives], axis=1, out=cumulative[:, 1:])
    below = np.searchsorted(scores[negatives], scores[positives], "left")
    up_to = np.searchsorted(scores[negatives], scores[positives], "right")
    positive_weights = weights[:, positives]
    # each positive wins over the negatives below it and half of those tied with it
    wins = 0.5 * np.einsum("bi,bi->b", positive_weights, cumulative[:, below] + cumulative[:, up_to])
    denominator = positive_weights.sum(axis=1) * cumulative[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, wins / denominator, np.nan)


def weighted_confusion(labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """``(B, k, k)`` confusion matrices (rows: label, columns: prediction) under ``B`` weightings."""
    codes = np.asarray(labels).astype(int) * k + np.asarray(predicted).astype(int)
    onehot = np.zeros((len(codes), k * k))
    onehot[np.arange(len(codes)), codes] = 1.0
    return (np.asarray(weights, dtype=float) @ onehot).reshape(-1, k, k)


def kappa_from_confusion(observed: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of ``(B, k, k)`` confusion matrices, as
    :func:`~retinassl.metrics.classification.quadratic_kappa` (NaN when undefined)."""
    k = observed.shape[-1]
    total = observed.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / total[:, None, None]
        i, j = np.indices((k, k))
        w = (i - j) ** 2 / (k - 1) ** 2
        denominator = (w * expected).sum(axis=(1, 2))
        kappa = 1 - (w * observed).sum(axis=(1, 2)) / denominator
    return np.where((total > 0) & (denominator != 0), kappa, np.nan)


def _weighted_metric(metric: str | Callable, labels: np.ndarray, scores: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
    """``(B,)`` values of one seed's metric on the cases with ``weights`` ``(B, n)``."""
    if metric == "auc":
        return weighted_auc(labels, scores, weights)
    if metric == "auc_macro":  # mean over the labels whose AUC is defined, as multilabel_auc
        per = np.stack([weighted_auc(labels[:, c], scores[:, c], weights) for c in range(labels.shape[1])], axis=1)
        defined = np.isfinite(per)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(defined.any(axis=1), np.where(defined, per, 0).sum(axis=1) / defined.sum(axis=1), np.nan)
    if metric in ("kappa", "accuracy"):
        confusion = weighted_confusion(labels, scores.argmax(axis=1), weights, scores.shape[1])
        if metric == "kappa":
            return kappa_from_confusion(confusion)
        total = confusion.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, np.trace(confusion, axis1=1, axis2=2) / total, np.nan)
    if not callable(metric):
        raise ValueError(f"unknown metric {metric!r}: name one of {FAST_METRICS} or pass a function "
                         "(labels, scores) -> float")
    out = np.empty(len(weights))
    for b, counts in enumerate(np.asarray(weights).astype(int)):
        drawn = np.repeat(np.arange(len(counts)), counts)
        out[b] = metric(labels[drawn], scores[drawn])
    return out


def seed_image_bootstrap(labels: np.ndarray, scores: np.ndarray, metric: str | Callable, *,
                         folds: np.ndarray | None = None, strata: np.ndarray | None = None,
                         n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """The ``(1 - alpha)`` two-level percentile bootstrap interval of the mean over seeds of
    ``metric`` (see the module docstring).

    Args:
        labels: ``(N,)`` targets (0/1, or classes 0..K-1) or ``(N, K)`` multi-hot, of the test images
            of all seeds (their union).
        scores: ``(S, N)`` binary scores or ``(S, N, K)`` class/label scores, one row per seed; NaN
            where a seed has no prediction for an image.
        metric: ``"auc"`` (0/1 labels, ``(S, N)`` scores), ``"auc_macro"`` (multi-hot), ``"kappa"`` /
            ``"accuracy"`` (arg-max of ``(S, N, K)`` class scores), or a function
            ``(labels, scores) -> float`` of one seed's drawn cases (slower: a loop over replicates).
        folds: ``(S, N)`` fold of each (seed, image) prediction with k-fold cross-validation (a seed's
            metric is then the mean over its folds); None: one fold.
        strata: ``(N,)`` classes the images are resampled within (default: the label; multi-hot: has
            any positive label).
        n_boot: replicates. seed: the generator's seed (same seed, same interval).

    Returns:
        ``(lo, hi)``; NaN when no replicate gives a finite value.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[None]
    n_seeds, n_images = scores.shape[:2]
    if len(labels) != n_images:
        raise ValueError(f"scores cover {n_images} images but labels have {len(labels)}")
    present = np.isfinite(scores.reshape(n_seeds, n_images, -1)).all(axis=2)
    folds = np.zeros((n_seeds, n_images), dtype=int) if folds is None else np.asarray(folds)
    if strata is None:
        strata = labels.max(axis=1) if labels.ndim == 2 else labels
    rng = np.random.default_rng(seed)
    counts = image_counts(strata, n_boot, rng)
    # S - 1 of the S seeds (one of one): the bootstrap variance of their mean is then s^2 / S
    seed_draws = rng.multinomial(max(n_seeds - 1, 1), np.full(n_seeds, 1.0 / n_seeds), size=n_boot)  # (B, S)
    per_seed = np.full((n_boot, n_seeds), np.nan)
    for s in range(n_seeds):
        values = []
        for fold in np.unique(folds[s][present[s]]):
            rows = np.flatnonzero(present[s] & (folds[s] == fold))
            values.append(_weighted_metric(metric, labels[rows], scores[s][rows], counts[:, rows]))
        if values:
            stacked = np.stack(values, axis=1)
            finite = np.isfinite(stacked)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_seed[:, s] = np.where(finite, stacked, 0).sum(axis=1) / finite.sum(axis=1)
    finite = np.isfinite(per_seed)
    weight = seed_draws * finite
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = (weight * np.where(finite, per_seed, 0)).sum(axis=1) / weight.sum(axis=1)
    replicates = replicates[np.isfinite(replicates)]
    if len(replicates) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)

"""Classification metrics as plain functions of arrays (MONAI's ``compute_roc_auc`` style).

Every function takes label and score arrays and returns a float (or a dict of floats); undefined
values (e.g. AUC on a single-class set) are NaN rather than exceptions, so a sweep over tiny label
fractions records them instead of crashing.

- :func:`roc_auc`, :func:`average_precision`, :func:`sensitivity_at_specificity` for binary
  scores;
- :func:`quadratic_kappa` (Cohen's kappa with quadratic weights, the DR-grading metric of the
  Kaggle/EyePACS and IDRiD challenges) and :func:`accuracy` for ordinal/multiclass predictions;
- :func:`multilabel_auc` (per-label and macro AUC) for multi-hot targets;
- :func:`operating_point`, :func:`reliability_bins` and :func:`expected_calibration_error` for the
  thresholds and the calibration of binary probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve


def _binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels have {labels.size} cases but scores have {scores.size}")
    return labels, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``labels`` (0/1) ranked by ``scores``; NaN if one class.

    Computed as the Mann-Whitney statistic from mid-ranks (a tie between a positive and a negative
    counts one half), which equals scikit-learn's ``roc_auc_score`` and is much faster on the
    small arrays of bootstrap resamples.
    """
    labels, scores = _binary(labels, scores)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    if not np.isfinite(scores).all():
        return float(roc_auc_score(labels, scores))  # let scikit-learn report non-finite scores
    positive = labels == 1
    m = int(positive.sum())
    n = labels.size - m
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - m * (m + 1) / 2) / (m * n))


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve (for plots)."""
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=float))
    return fpr, tpr


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the step precision-recall curve); NaN without positives.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order
    (scikit-learn's definition: tied scores form one threshold, no interpolation).
    """
    labels, scores = _binary(labels, scores)
    positives = int(labels.sum())
    if labels.size == 0 or positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tp / predicted
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_gain * precision))


def sensitivity_at_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float = 0.9) -> float:
    """Highest sensitivity among thresholds whose specificity is at least ``specificity``.

    A case is called positive when its score is ``>=`` the threshold. NaN when one class is absent.
    """
    labels, scores = _binary(labels, scores)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    pos, neg = scores[labels == 1], scores[labels == 0]
    thresholds = np.r_[np.unique(scores), np.inf]
    best = 0.0
    for t in thresholds:
        spec = float(np.mean(neg < t))
        if spec >= specificity - 1e-12:
            best = max(best, float(np.mean(pos >= t)))
    return best


def quadratic_kappa(labels: np.ndarray, predicted: np.ndarray, num_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights between integer ``labels`` and ``predicted`` classes.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with ``W_ij = (i - j)^2 / (K - 1)^2``, ``O`` the observed
    confusion matrix and ``E`` the outer product of its marginals scaled to the same total. 1 is
    perfect agreement, 0 chance agreement. NaN when undefined (no cases, or both raters constant on
    the same class).
    """
    labels = np.asarray(labels).astype(int).ravel()
    predicted = np.asarray(predicted).astype(int).ravel()
    if labels.shape != predicted.shape:
        raise ValueError(f"labels have {labels.size} cases but predictions have {predicted.size}")
    if labels.size == 0:
        return float("nan")
    k = num_classes if num_classes is not None else int(max(labels.max(), predicted.max())) + 1
    if k < 2:
        return float("nan")
    observed = np.zeros((k, k))
    np.add.at(observed, (labels, predicted), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    denominator = float((weights * expected).sum())
    if denominator == 0:
        return float("nan")
    return float(1 - (weights * observed).sum() / denominator)


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of cases whose predicted class equals the label; NaN with no cases."""
    labels = np.asarray(labels).astype(int).ravel()
    predicted = np.asarray(predicted).astype(int).ravel()
    return float(np.mean(labels == predicted)) if labels.size else float("nan")


def multilabel_auc(labels: np.ndarray, scores: np.ndarray,
                   names: list[str] | None = None) -> dict[str, float]:
    """Per-label AUC and their macro average for multi-hot targets.

    Args:
        labels: ``(N, K)`` 0/1.
        scores: ``(N, K)`` per-label scores.
        names: ``K`` label names (default ``"0"``..``"K-1"``).

    Returns:
        ``{name: AUC}`` for each label (NaN where the label has one class in ``labels``) and
        ``"macro"``: the mean over the labels whose AUC is defined (NaN when none is).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"multi-label AUC needs (N, K) labels and scores of the same shape, got "
                         f"{labels.shape} and {scores.shape}")
    names = names if names is not None else [str(k) for k in range(labels.shape[1])]
    if len(names) != labels.shape[1] or "macro" in names:
        raise ValueError(f"need {labels.shape[1]} label names other than 'macro', got {names}")
    out = {name: roc_auc(labels[:, k], scores[:, k]) for k, name in enumerate(names)}
    defined = [v for v in out.values() if np.isfinite(v)]
    out["macro"] = float(np.mean(defined)) if defined else float("nan")
    return out


def operating_point(labels: np.ndarray, scores: np.ndarray, sensitivity: float = 0.9) -> dict[str, float]:
    """Thresholds chosen on a validation set (binary): ``threshold`` maximises Youden's J =
    sensitivity + specificity - 1 (ties: the lowest such threshold); ``threshold_at_sensitivity``
    is the highest threshold whose sensitivity reaches ``sensitivity`` (a screening operating
    point). A score ``>= threshold`` is predicted positive. With both rates at each threshold."""
    labels, scores = _binary(labels, scores)
    candidates = np.unique(scores)
    pos, neg = labels == 1, labels == 0
    sens = np.array([(scores[pos] >= t).mean() for t in candidates])
    spec = np.array([(scores[neg] < t).mean() for t in candidates])
    best = int(np.argmax(sens + spec - 1))
    reaching = np.flatnonzero(sens >= sensitivity)
    screen = int(reaching[-1]) if len(reaching) else 0
    return {"threshold": float(candidates[best]), "sensitivity": float(sens[best]),
            "specificity": float(spec[best]), "target_sensitivity": float(sensitivity),
            "threshold_at_sensitivity": float(candidates[screen]),
            "specificity_at_sensitivity": float(spec[screen]), "n_val": float(len(labels))}


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray,
                     bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reliability diagram of binary probabilities (Guo et al. 2017, "On Calibration of Modern
    Neural Networks": "we group predictions into M interval bins (each of size 1/M) and calculate
    the accuracy of each bin"): per equal-width probability bin, ``(mean probability, observed
    positive rate, count)``, each ``(bins,)``; an empty bin has NaN rates and count 0."""
    labels = np.asarray(labels, dtype=float)
    probabilities = np.clip(np.asarray(probabilities, dtype=float), 0, 1)
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(index, weights=probabilities, minlength=bins) / count
        rate = np.bincount(index, weights=labels, minlength=bins) / count
    return mean, rate, count


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """ECE of binary probabilities: the mean over ``bins`` equal-width probability bins of
    |observed positive rate - mean probability|, weighted by the bin's share of the images."""
    mean, rate, count = reliability_bins(labels, probabilities, bins)
    inside = count > 0
    return float(np.sum(count[inside] / count.sum() * np.abs(rate[inside] - mean[inside])))

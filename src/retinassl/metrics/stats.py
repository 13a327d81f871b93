"""Statistics for comparing classifiers: DeLong's test for correlated AUCs and bootstrap intervals.

DeLong, DeLong & Clarke-Pearson (Biometrics 1988) estimate the covariance of AUCs measured on the
same cases from the "structural components" of each AUC; Sun & Xu (IEEE SPL 2014, "Fast
implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
characteristic curves") compute them from mid-ranks in O(N log N) instead of O(m n).
:func:`delong_covariance_slow` is the O(m n) definition, kept as the reference the tests check the
fast version against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _stats

from retinassl.metrics.classification import roc_auc


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based mid-ranks of ``x`` (ties share the average of their ranks)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    ranks = np.empty(n, dtype=float)
    i = 0
    while i < n:
        j = i
        while j < n and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n, dtype=float)
    out[order] = ranks
    return out


def _split(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    if scores.shape[1] != len(labels):
        raise ValueError(f"scores have {scores.shape[1]} cases but labels have {len(labels)}")
    if labels.min() == labels.max():
        raise ValueError("DeLong's test needs both positive and negative cases")
    return scores[:, labels == 1], scores[:, labels == 0]


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and their covariance ``(k, k)`` for ``k`` classifiers scored on the same cases.

    Args:
        labels: ``(N,)`` 0/1.
        scores: ``(k, N)`` (or ``(N,)`` for one classifier); higher = more likely positive.
    """
    pos, neg = _split(labels, scores)
    k, m = pos.shape
    n = neg.shape[1]
    tx = np.stack([_midranks(p) for p in pos])
    ty = np.stack([_midranks(q) for q in neg])
    tz = np.stack([_midranks(np.concatenate([p, q])) for p, q in zip(pos, neg)])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n          # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m    # ... and of the negatives
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def delong_covariance_slow(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The O(m n) definition of :func:`delong_covariance` (reference implementation)."""
    pos, neg = _split(labels, scores)
    k, m = pos.shape
    n = neg.shape[1]
    psi = [(p[:, None] > q[None, :]).astype(float) + 0.5 * (p[:, None] == q[None, :])
           for p, q in zip(pos, neg)]
    aucs = np.array([s.mean() for s in psi])
    v10 = np.stack([s.mean(axis=1) for s in psi])  # per positive case
    v01 = np.stack([s.mean(axis=0) for s in psi])  # per negative case
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


@dataclass(frozen=True)
class DeLongResult:
    """Two correlated AUCs, their difference, its DeLong standard error, and the two-sided p-value
    of H0: equal AUCs."""

    auc_a: float
    auc_b: float
    difference: float
    z: float
    p_value: float
    standard_error: float


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """Paired DeLong test of two classifiers' AUCs on the same cases.

    Returns NaN z and p when the two scores give identical structural components (zero variance
    of the difference, e.g. identical rankings).
    """
    aucs, cov = delong_covariance(labels, np.vstack([scores_a, scores_b]))
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 1e-15:
        z = p = float("nan") if abs(diff) < 1e-15 else float("inf")
        if p == float("inf"):
            p = 0.0
        return DeLongResult(float(aucs[0]), float(aucs[1]), float(diff), float(z), float(p), 0.0)
    se = float(np.sqrt(var))
    return DeLongResult(float(aucs[0]), float(aucs[1]), float(diff), float(diff / se),
                        float(2 * _stats.norm.sf(abs(diff / se))), se)


def significant_by_sign(p_values, differences, alpha: float = 0.05) -> tuple[int, int]:
    """Of paired two-sided tests with ``p_values`` and effect ``differences`` (a - b), how many
    reach ``p < alpha`` with a > b, and how many with a < b (NaN p-values count as neither)."""
    p = np.asarray(p_values, dtype=float)
    d = np.asarray(differences, dtype=float)
    significant = p < alpha
    return int(np.sum(significant & (d > 0))), int(np.sum(significant & (d < 0)))


def signed_count(better: int, worse: int, n: int) -> str:
    """``+better/-worse of n``: how tables show :func:`significant_by_sign`."""
    return f"+{int(better)}/-{int(worse)} of {int(n)}"


def delong_ci(labels: np.ndarray, scores: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Asymptotic (1 - alpha) confidence interval of one AUC from DeLong's variance, clipped to [0, 1]."""
    aucs, cov = delong_covariance(labels, scores)
    half = _stats.norm.ppf(1 - alpha / 2) * np.sqrt(max(cov[0, 0], 0.0))
    return float(max(0.0, aucs[0] - half)), float(min(1.0, aucs[0] + half))


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray,
                 metric: Callable[[np.ndarray, np.ndarray], float] = roc_auc, n_boot: int = 2000,
                 alpha: float = 0.05, seed: int = 0, stratified: bool = True) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric(labels, scores)``.

    Cases are resampled with replacement; ``stratified`` resamples positives and negatives
    separately (each resample keeps the class counts, so AUC is always defined).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    if stratified:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for b in range(n_boot):
        if stratified:
            idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        else:
            idx = rng.integers(0, len(labels), len(labels))
        values[b] = metric(labels[idx], scores[idx])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


def mean_ci(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Student-t (1 - alpha) interval of the mean of ``values`` (e.g. AUCs over seeds or folds)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    half = _stats.t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)

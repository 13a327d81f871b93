"""DeLong (fast vs the O(mn) definition, and a published example) and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from retinassl.metrics.stats import (bootstrap_ci, delong_ci, delong_covariance, delong_covariance_slow,
                                      delong_test, mean_ci)


def correlated_scores(n: int, seed: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    a = labels * 1.0 + shared + rng.normal(scale=0.8, size=n)
    b = labels * 0.6 + shared + rng.normal(scale=0.8, size=n)
    if ties:
        a, b = np.round(a), np.round(b * 2) / 2
    return labels, a, b


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, False)])
def test_fast_delong_equals_definition(seed: int, ties: bool) -> None:
    labels, a, b = correlated_scores(120, seed, ties)
    fast_auc, fast_cov = delong_covariance(labels, np.vstack([a, b]))
    slow_auc, slow_cov = delong_covariance_slow(labels, np.vstack([a, b]))
    assert np.allclose(fast_auc, slow_auc, atol=1e-12)
    assert np.allclose(fast_cov, slow_cov, atol=1e-12)
    assert np.isclose(fast_auc[0], roc_auc_score(labels, a))


def test_hand_computed_example() -> None:
    # positives {3, 2}, negatives {1, 2}: psi = [[1, 1], [1, .5]] -> AUC 0.875
    # V10 (per positive) = [1, .75], V01 (per negative) = [1, .75]; var = .03125/2 + .03125/2
    labels = np.array([1, 1, 0, 0])
    scores = np.array([3.0, 2.0, 1.0, 2.0])
    aucs, cov = delong_covariance(labels, scores)
    assert aucs[0] == pytest.approx(0.875)
    assert cov[0, 0] == pytest.approx(0.03125)


def test_delong_test_symmetry_and_identity() -> None:
    labels, a, b = correlated_scores(200, 3)
    r = delong_test(labels, a, b)
    s = delong_test(labels, b, a)
    assert r.difference == pytest.approx(-s.difference) and r.p_value == pytest.approx(s.p_value)
    assert 0 < r.p_value < 1
    same = delong_test(labels, a, a)
    assert np.isnan(same.p_value)
    # a monotone transform does not change the ranking, hence not the AUC
    assert delong_test(labels, a, np.exp(a)).difference == pytest.approx(0)


def test_delong_test_standard_error_is_that_of_the_difference() -> None:
    labels, a, b = correlated_scores(150, 4, ties=True)
    _, cov = delong_covariance_slow(labels, np.vstack([a, b]))
    r = delong_test(labels, a, b)
    assert r.standard_error == pytest.approx(np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), rel=1e-9)
    assert r.z * r.standard_error == pytest.approx(r.difference)
    assert delong_test(labels, a, a).standard_error == 0.0


def test_delong_p_value_calibrated_under_null() -> None:
    # two equally good, correlated classifiers: p < 0.05 in about 5 % of datasets
    rejections = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, 80)
        shared = rng.normal(size=80)
        a = labels + shared + rng.normal(size=80)
        b = labels + shared + rng.normal(size=80)
        rejections += delong_test(labels, a, b).p_value < 0.05
    assert 0.02 <= rejections / 300 <= 0.09


def test_bootstrap_and_asymptotic_intervals_agree() -> None:
    labels, a, _ = correlated_scores(300, 4)
    auc = roc_auc_score(labels, a)
    lo, hi = bootstrap_ci(labels, a, n_boot=800, seed=0)
    dlo, dhi = delong_ci(labels, a)
    assert lo < auc < hi and dlo < auc < dhi
    assert abs(lo - dlo) < 0.02 and abs(hi - dhi) < 0.02
    assert bootstrap_ci(labels, a, n_boot=200, seed=1) == bootstrap_ci(labels, a, n_boot=200, seed=1)


def test_mean_ci() -> None:
    lo, hi = mean_ci(np.array([0.8, 0.82, 0.84]))
    # mean .82, sd .02, t(.975, 2) = 4.303 -> half width 4.303 * .02 / sqrt(3) = .04969
    assert lo == pytest.approx(0.82 - 0.049685, abs=1e-5) and hi == pytest.approx(0.82 + 0.049685, abs=1e-5)
    assert np.isnan(mean_ci(np.array([0.5]))[0])

"""Metrics against hand-computed values (and scikit-learn where it has the same definition)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, cohen_kappa_score, roc_auc_score

from retinassl.metrics.classification import (accuracy, average_precision, multilabel_auc, quadratic_kappa,
                                        roc_auc, sensitivity_at_specificity)


def test_roc_auc_hand_and_undefined() -> None:
    # positives {0.8, 0.4}, negatives {0.5, 0.1}: pairs won 1 + 1 + 0 + 1 of 4 -> 0.75
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.5, 0.4, 0.1])) == pytest.approx(0.75)
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert np.isnan(roc_auc(np.array([], dtype=int), np.array([])))
    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 300), np.round(rng.normal(size=300), 1)   # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_average_precision_hand() -> None:
    # ranking 1,0,1,0: P@R=.5 is 1, P@R=1 is 2/3 -> .5 * 1 + .5 * 2/3
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(labels, scores) == pytest.approx(0.5 + 1 / 3)
    # a tie between a positive and a negative is one threshold: P = 1/2 at R = 1/2, then 2/3 at 1
    tied_l, tied_s = np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2])
    assert average_precision(tied_l, tied_s) == pytest.approx(0.25 + 1 / 3)
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), np.round(rng.normal(size=200), 1)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert np.isnan(average_precision(np.zeros(4), np.arange(4.0)))


def test_sensitivity_at_specificity_hand() -> None:
    neg = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    pos = [0.85, 0.6, 0.97, 0.3]
    labels = np.array([0] * 10 + [1] * 4)
    scores = np.array(neg + pos)
    # spec >= .9 allows one negative at or above the threshold: t = .95 -> only .97 is called
    assert sensitivity_at_specificity(labels, scores, 0.9) == pytest.approx(0.25)
    # spec >= .8 allows two: t = .85 -> .85 and .97
    assert sensitivity_at_specificity(labels, scores, 0.8) == pytest.approx(0.5)
    assert sensitivity_at_specificity(labels, scores, 0.0) == pytest.approx(1.0)
    assert np.isnan(sensitivity_at_specificity(np.ones(3), np.arange(3.0)))


def test_quadratic_kappa_hand() -> None:
    # O = e00 + e12 + e22; E rows [1/3, 0, 2/3]; sum W*O = 1/4, sum W*E = 5/4 -> 1 - 1/5
    labels, predicted = np.array([0, 1, 2]), np.array([0, 2, 2])
    assert quadratic_kappa(labels, predicted) == pytest.approx(0.8)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 100)
    p = np.clip(y + rng.integers(-1, 2, 100), 0, 4)
    assert quadratic_kappa(y, p, 5) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert quadratic_kappa(y, y) == pytest.approx(1.0)
    assert np.isnan(quadratic_kappa(np.array([2, 2]), np.array([2, 2])))
    assert accuracy(labels, predicted) == pytest.approx(2 / 3)


def test_multilabel_auc_per_label_and_macro() -> None:
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.6, 0.4, 0.3], [0.1, 0.5, 0.4]])
    out = multilabel_auc(labels, scores, ["DR", "ARMD", "MH"])
    assert out["DR"] == pytest.approx(1.0)          # positives .9, .6 above negatives .3, .1
    assert out["ARMD"] == pytest.approx(0.75)       # positives .8, .4 vs negatives .2, .5: 3 of 4
    assert np.isnan(out["MH"])                      # no positive: undefined, left out of the macro
    assert out["macro"] == pytest.approx(0.875)
    with pytest.raises(ValueError):
        multilabel_auc(labels, scores[:, :2])

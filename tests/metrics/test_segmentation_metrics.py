"""FOV-masked vessel metrics against hand-counted values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinassl.metrics.segmentation import (bootstrap_over_images, confusion_counts,
                                                     metrics_from_counts, segmentation_metrics)

# 4x4 example. FOV: everything except the first column (12 pixels inside).
TRUTH = np.array([[1, 1, 0, 0],
                  [1, 1, 0, 0],
                  [0, 0, 1, 0],
                  [0, 0, 0, 0]], dtype=bool)
PRED = np.array([[1, 1, 1, 0],
                 [0, 1, 0, 0],
                 [1, 0, 0, 0],
                 [0, 0, 0, 1]], dtype=bool)
FOV = np.array([[0, 1, 1, 1]] * 4, dtype=bool)
# Inside the FOV (columns 1-3), by hand:
#   TP: (0,1) (1,1)                  = 2
#   FP: (0,2) (3,3)                  = 2   [(2,0) is outside the FOV]
#   FN: (2,2)                        = 1   [(1,0) is outside the FOV]
#   TN: 12 - 2 - 2 - 1               = 7


def test_counts_inside_fov_by_hand() -> None:
    assert confusion_counts(PRED, TRUTH, FOV).tolist() == [2, 2, 1, 7]
    assert confusion_counts(PRED, TRUTH).tolist() == [3, 3, 2, 8]  # whole image, also by hand


def test_metrics_by_hand() -> None:
    m = metrics_from_counts(np.array([2, 2, 1, 7]))
    assert m["dice"] == pytest.approx(4 / 7)          # 2*2 / (2*2 + 2 + 1)
    assert m["sensitivity"] == pytest.approx(2 / 3)   # 2 / (2 + 1)
    assert m["specificity"] == pytest.approx(7 / 9)   # 7 / (7 + 2)
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["precision"] == pytest.approx(2 / 4)


def test_outside_fov_is_ignored() -> None:
    noisy = PRED.copy()
    noisy[:, 0] = ~noisy[:, 0]  # anything outside the FOV
    prob = noisy.astype(np.float32)
    assert segmentation_metrics(prob, TRUTH, FOV) == segmentation_metrics(PRED.astype(np.float32), TRUTH, FOV)


def test_probability_map_threshold_and_auc_by_hand() -> None:
    truth = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    prob = np.array([[0.9, 0.8, 0.4], [0.1, 0.3, 0.7]], dtype=np.float32)
    fov = np.ones_like(truth)
    m = segmentation_metrics(prob, truth, fov, threshold=0.5)
    # threshold 0.5: predicted {0.9, 0.8, 0.7}; TP 2 (0.9, 0.7), FP 1 (0.8), FN 1 (0.4), TN 2
    assert m["dice"] == pytest.approx(4 / 6)
    # AUC: positives {0.9, 0.4, 0.7} vs negatives {0.8, 0.1, 0.3}: pairs won 3 + 2 + 2 = 7 of 9
    assert m["auc"] == pytest.approx(7 / 9)


def test_pooled_counts_and_undefined_values() -> None:
    both = np.stack([[2, 2, 1, 7], [1, 0, 0, 3]])
    assert metrics_from_counts(both)["dice"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    empty = metrics_from_counts(np.array([0, 0, 0, 5]))
    assert math.isnan(empty["dice"]) and math.isnan(empty["sensitivity"])
    assert empty["specificity"] == 1.0


def test_bootstrap_over_images() -> None:
    rng = np.random.default_rng(0)
    counts = np.stack([[int(rng.integers(50, 100)), int(rng.integers(5, 30)), int(rng.integers(5, 30)), 1000]
                       for _ in range(12)])
    pooled = metrics_from_counts(counts)["dice"]
    low, high = bootstrap_over_images(counts, n_boot=300, seed=1)["dice"]
    assert low < pooled < high
    same = bootstrap_over_images(np.stack([[10, 2, 3, 50]] * 5), n_boot=50)["dice"]
    assert same[0] == pytest.approx(same[1]) == pytest.approx(20 / 25)


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_counts(PRED, TRUTH[:3], FOV)

"""The error anatomy of patch logits (semisup/anatomy.py) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from retinassl.metrics.anatomy import anatomy_table, between_image_share, diseased_image_table, logit_anatomy


def test_between_image_share_by_hand() -> None:
    assert between_image_share(np.array([[0, 0], [2, 2]])) == pytest.approx(1.0)
    assert between_image_share(np.array([[0, 2], [0, 2]])) == pytest.approx(0.0)
    # grand mean 2, total sum of squares 4+1+0+9 = 14, row means 0.5 and 3.5: between 2*(2.25+2.25) = 9
    assert between_image_share(np.array([[0, 1], [2, 5]])) == pytest.approx(9 / 14)


def _offset_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two DR images (one diseased patch scored 5, three lesion-free scored 0) and two healthy
    ones, one scored 0 everywhere and one scored 3 everywhere (an image-wide offset)."""
    logits = np.array([[5, 0, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0], [3, 3, 3, 3]], float)
    patch_labels = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    return logits, patch_labels, np.array([1, 1, 0, 0])


def test_an_image_wide_offset_costs_the_image_auc_not_the_patch_auc() -> None:
    logits, patch_labels, image_labels = _offset_case()
    a = logit_anatomy(logits, patch_labels, image_labels, draws=4000, seed=1)
    # image scores: DR 0.9933 + 1.5 = 2.49; healthy 2.0 and 4 * 0.9526 = 3.81: each DR image
    # beats one healthy image of two
    assert a["image_auc"] == pytest.approx(0.5)
    assert a["patch_auc"] == pytest.approx(1.0) and a["lesion_auc"] == pytest.approx(1.0)
    # lesion-free DR patches (0) vs healthy patches (four 0, four 3): ties count half
    assert a["context_auc"] == pytest.approx((4 * 0.5 + 4 * 0) / 8)
    assert a["between_image_share"] == pytest.approx(1.0)
    # independent redraws: a lesion-free patch is 3 with p = 4/14; a DR image (5 + three draws)
    # beats a healthy one (four draws) iff k_healthy <= k_dr + 1, since
    # sigmoid(5) - 0.5 = 0.4933 and sigmoid(3) - 0.5 = 0.4526
    p = 4 / 14
    expected = sum(binom.pmf(k, 3, p) * binom.cdf(k + 1, 4, p) for k in range(4))
    assert a["independent_image_auc"] == pytest.approx(expected, abs=0.01)
    assert a["independent_image_auc"] > a["image_auc"]


def test_one_sided_redraws_show_on_which_side_the_auc_is_lost() -> None:
    logits, patch_labels, image_labels = _offset_case()
    a = logit_anatomy(logits, patch_labels, image_labels, draws=4000, seed=2)
    # healthy side: each healthy patch is redrawn from four 0s and four 3s (p = 1/2); a DR image
    # (2.493) beats a healthy one (2 + 0.4526 k) iff k <= 1: P = 5/16 for k ~ Binomial(4, 1/2)
    assert a["healthy_independent_image_auc"] == pytest.approx(5 / 16, abs=0.015)
    # DR side: the pools are all 5s (lesions) and all 0s (lesion-free): nothing changes
    assert a["diseased_independent_image_auc"] == pytest.approx(a["image_auc"])


def test_mixing_mild_and_severe_eyes_on_the_dr_side() -> None:
    # an easy DR image (two lesions at 4) and a hard one (two at -5); healthy images all 0
    logits = np.array([[4, 4, 0, 0], [-5, -5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], float)
    patch_labels = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    image_labels = np.array([1, 1, 0, 0])
    a = logit_anatomy(logits, patch_labels, image_labels, draws=4000, seed=3)
    assert a["image_auc"] == pytest.approx(0.5)
    # redrawn from {4, 4, -5, -5}: a DR image beats the healthy ones (2.0) only with both at 4
    # (2 sigmoid(4) + 1 = 2.96; one of each: sigmoid(4) + sigmoid(-5) + 1 = 1.99), P = 1/4
    assert a["diseased_independent_image_auc"] == pytest.approx(0.25, abs=0.015)
    assert a["healthy_independent_image_auc"] == pytest.approx(0.5)


def _saved_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The offset case as a sweep saves it: predictions (``id, label, patch_..``) and patch labels."""
    logits, patch_labels, image_labels = _offset_case()
    columns = [f"patch_{j:02d}" for j in range(4)]
    frame = pd.DataFrame(logits, columns=columns)
    frame.insert(0, "label", image_labels)
    frame.insert(0, "id", ["a", "b", "c", "d"])
    labels = pd.DataFrame(patch_labels, columns=columns)
    labels.insert(0, "id", ["a", "b", "c", "d"])
    return frame, labels


def test_anatomy_table_averages_seeds_and_names_images_without_labels() -> None:
    frame, labels = _saved_tables()
    shuffled = frame.iloc[[3, 1, 0, 2]].reset_index(drop=True)  # rows matched by id, not position
    table = anatomy_table({("convnet", 4): [frame, shuffled]}, labels, draws=50)
    assert len(table) == 1 and table.loc[0, "cells"] == 2
    assert table.loc[0, "image_auc"] == pytest.approx(0.5)
    assert table.loc[0, "context_auc"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no patch labels"):
        anatomy_table({("convnet", 4): [frame]}, labels.iloc[:3], draws=5)


def test_diseased_image_table_by_hand() -> None:
    frame, labels = _saved_tables()
    table = diseased_image_table({("convnet", 4): [frame], ("convnet", 8): [frame]}, labels, 4)
    assert list(table.index) == ["a", "b"]
    # each DR image (2.49) is beaten by the healthy image scored 3 everywhere (3.81), not the other
    assert table["convnet: healthy at or above"].tolist() == [0.5, 0.5]
    # its lesion patch (5) against the eight healthy patches (four 0, four 3): above all of them
    assert table["convnet: lesion vs healthy patches AUC"].tolist() == [1.0, 1.0]

"""Patch grids and labels (against hand counts), and splits (nesting, stratification, groups)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinassl.data.patches import (from_patches, patch_boxes, patch_labels, patch_pixel_counts,
                                    patch_values_to_image, to_patches)
from retinassl.data.splits import inner_folds, nested_subsets, stratified_group_split, stratified_kfold
from retinassl.errors import DataError


def test_patch_labels_hand_counted() -> None:
    mask = np.zeros((16, 16), bool)
    mask[0, 0] = True            # patch (0, 0): 1 pixel
    mask[5:7, 12:14] = True      # patch (1, 3): 4 pixels
    mask[15, 15] = True          # patch (3, 3): 1 pixel
    counts = patch_pixel_counts(mask, 4)
    expected = np.zeros((4, 4), int)
    expected[0, 0], expected[1, 3], expected[3, 3] = 1, 4, 1
    assert np.array_equal(counts, expected)
    assert patch_labels(mask, 4).sum() == 3
    assert np.array_equal(np.argwhere(patch_labels(mask, 4, min_pixels=2)), [[1, 3]])


def test_patches_round_trip_and_order() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = to_patches(x, 4)
    assert p.shape == (32, 3, 2, 2)
    assert torch.equal(from_patches(p, 4), x)
    # patch j = row * grid + col of image b sits at b * 16 + j
    assert torch.equal(p[16 + 4 * 1 + 2], x[1, :, 2:4, 4:6])
    boxes = patch_boxes(8, 8, 4)
    assert boxes[6].tolist() == [2, 4, 4, 6]


def test_values_to_image_and_divisibility() -> None:
    v = np.arange(4, dtype=float).reshape(2, 2)
    img = patch_values_to_image(v, 4, 4)
    assert img[0, 0] == 0 and img[0, 3] == 1 and img[3, 0] == 2 and img[3, 3] == 3
    with pytest.raises(DataError, match="divisible by 3"):
        patch_labels(np.zeros((10, 10), bool), 3)


def test_group_split_sizes_strata_and_groups() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(81, int), np.zeros(168, int)]
    groups = np.array([f"p{i // 2}" for i in range(249)])  # two eyes per patient
    rng.shuffle(groups)
    split = stratified_group_split(labels, groups, {"train": 149, "val": 50, "test": 50}, seed=3)
    counts = {k: int((split == k).sum()) for k in ("train", "val", "test")}
    assert abs(counts["train"] - 149) <= 2 and abs(counts["val"] - 50) <= 2
    for k in ("train", "val", "test"):
        share = labels[split == k].mean()
        assert abs(share - 81 / 249) < 0.05, (k, share)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    again = stratified_group_split(labels, groups, {"train": 149, "val": 50, "test": 50}, seed=3)
    assert np.array_equal(split, again)
    other = stratified_group_split(labels, groups, {"train": 149, "val": 50, "test": 50}, seed=4)
    assert not np.array_equal(split, other)


def test_nested_subsets_are_nested_stratified_and_seeded() -> None:
    labels = np.r_[np.ones(48, int), np.zeros(101, int)]
    subsets = nested_subsets(labels, [10, 20, 40, 80, 149], seed=7)
    sizes = [10, 20, 40, 80, 149]
    for small, big in zip(sizes, sizes[1:]):
        assert set(subsets[small]) <= set(subsets[big])
    for k in sizes:
        assert len(subsets[k]) == k
        assert set(labels[subsets[k]]) == {0, 1}
        assert abs(labels[subsets[k]].mean() - 48 / 149) <= 1.5 / k + 0.05
    fractions = nested_subsets(labels, [0.01, 0.05, 1.0], seed=7)
    assert len(fractions[0.01]) == 2 and len(fractions[1.0]) == 149
    assert set(fractions[0.01]) <= set(fractions[0.05])
    assert not np.array_equal(nested_subsets(labels, [20], seed=8)[20], subsets[20])


def test_kfold_groups_and_strata() -> None:
    labels = np.r_[np.ones(30, int), np.zeros(70, int)]
    groups = np.array([f"p{i // 2}" for i in range(100)])
    folds = stratified_kfold(labels, groups, 5, seed=0)
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(100))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert abs(labels[te].mean() - 0.3) < 0.1
    with pytest.raises(DataError, match="at least 5 items of every class"):
        stratified_kfold(np.r_[np.ones(3, int), np.zeros(10, int)], None, 5, seed=0)


def test_inner_folds_keep_patients_whole_and_never_validate_on_kept_out_rows() -> None:
    """The inner cross-validation of a choice (the probe's C): a patient's rows fall in one fold, and
    the rows kept out (with their patients) are fitted in every fold and validated in none."""
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    # without patients and marks: scikit-learn's StratifiedKFold over the rows, as before
    reference = list(StratifiedKFold(3, shuffle=True, random_state=5).split(np.zeros(60), labels))
    folds = inner_folds(labels, None, 3, 5)
    assert len(folds) == 3
    for (fit, val), (ref_fit, ref_val) in zip(folds, reference):
        assert np.array_equal(fit, ref_fit) and np.array_equal(val, ref_val)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(inner_folds(labels, [""] * 60, 3, 5), folds))
    # patients of two or three rows, six rows kept out (and their patients)
    patients = np.array([f"p{i // 3}" if i < 30 else f"q{i // 2}" for i in range(60)])
    kept = np.zeros(60, dtype=bool)
    kept[[0, 7, 31, 44, 45, 58]] = True
    blocked = np.isin(patients, patients[kept])
    folds = inner_folds(labels, patients, 3, 5, kept)
    validated = np.concatenate([val for _, val in folds])
    assert len(validated) == len(set(validated.tolist())) == int((~blocked).sum())  # each free row once
    assert not blocked[validated].any()
    for fit, val in folds:
        assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(60))
        assert blocked[fit].sum() == blocked.sum()  # every kept-out row fitted in every fold
        assert not set(patients[fit]) & set(patients[val])  # no patient on both sides
        assert set(labels[val]) == {0, 1}
    # a class in fewer than k patients among the rows not kept out: no folds
    few = np.array([1] * 4 + [0] * 16)
    assert inner_folds(few, None, 3, 0) is not None
    assert inner_folds(few, None, 3, 0, np.array([True, True] + [False] * 18)) is None
    assert inner_folds(few, ["a", "a", "b", "b"] + [f"n{i}" for i in range(16)], 3, 0) is None
    assert inner_folds(np.zeros(20, dtype=int), None, 3, 0) is None
    # folds of whole patients that would leave a fitted part without positives (every positive patient in
    # one fold; stratification by group is approximate): none, rather than a probe fitted on one class
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1])
    groups = ["p1", "p4", "p5", "p5", "p1", "p0", "p4", "p2", "p2", "p5", "p0", "p2", "p0", "p1", "p2", "p2", "p2"]
    assert inner_folds(labels, groups, 3, 0) is None
    for seed in range(20):  # whenever folds are given, every fitted part has both classes
        for fit, val in inner_folds(labels, groups, 3, seed) or []:
            assert set(labels[fit]) == {0, 1} and len(val)

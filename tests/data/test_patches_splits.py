"""Patch grids and labels (against hand counts), and splits (nesting, stratification, groups)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinassl.data.patches import (from_patches, patch_boxes, patch_labels, patch_pixel_counts,
                                    patch_values_to_image, to_patches)
from retinassl.data.splits import nested_subsets, stratified_group_split, stratified_kfold
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

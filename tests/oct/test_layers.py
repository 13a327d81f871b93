"""Boundary rows <-> labels <-> polylines, gap filling, and boundary extraction from probabilities
(continuity, holes, spurious edges, ordering)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinassl.errors import DataError
from retinassl.oct.boundaries import extract_boundaries, rescale_rows
from retinassl.oct.layers import (IGNORE_LABEL, boundaries_to_labels, fill_gaps, labels_to_boundaries,
                                  polylines_to_rows, rows_to_polylines)
from retinassl.losses.segmentation import masked_dice_loss
from retinassl.metrics.segmentation import region_dice


def _boundaries(width: int = 48) -> np.ndarray:
    c = np.arange(width)
    return np.stack([20 + 5 * np.sin(c / 8), 27 + 5 * np.sin(c / 8), 45 + 3 * np.cos(c / 10)])


def _probabilities(b: np.ndarray, depth: int) -> np.ndarray:
    """Region probabilities with partial-volume edges from exact boundaries: ``(K + 1, D, W)``."""
    rows = np.arange(depth)[:, None]
    below = [np.clip(rows + 0.5 - bk[None], 0, 1) for bk in b]      # P(row below boundary k)
    probs = [1 - below[0]] + [below[k] - below[k + 1] for k in range(len(b) - 1)] + [below[-1]]
    return np.stack(probs).astype(np.float32)


def test_labels_by_hand():
    b = np.array([[1.2, 0.5], [2.5, 3.0]])             # two boundaries, two A-scans
    labels = boundaries_to_labels(b, 4)
    # column 0: rows >= 1.2 are below the first (rows 2, 3), >= 2.5 below the second (row 3)
    np.testing.assert_array_equal(labels[:, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(labels[:, 1], [0, 1, 1, 2])
    nan_col = boundaries_to_labels(np.array([[1.0, np.nan], [2.0, 3.0]]), 4)
    assert (nan_col[:, 1] == IGNORE_LABEL).all()
    with pytest.raises(DataError, match="cross"):
        boundaries_to_labels(np.array([[3.0], [1.0]]), 4)


def test_labels_round_trip_within_half_a_pixel():
    b = _boundaries()
    back = labels_to_boundaries(boundaries_to_labels(b, 64), 3)
    assert np.abs(back - b).max() <= 0.5 + 1e-9


def test_polylines_round_trip_with_a_gap():
    rows = _boundaries()[0].astype(np.float32)
    rows[10:15] = np.nan
    lines = rows_to_polylines(rows)
    assert len(lines) == 2 and lines[0][-1, 0] == 9 and lines[1][0, 0] == 15
    np.testing.assert_array_equal(polylines_to_rows(lines, len(rows)), rows)
    # an annotator's sparse polyline: linear between its points, NaN outside its x range
    sparse = polylines_to_rows([np.array([[10.0, 5.0], [2.0, 1.0], [6.0, 3.0]])], 12)
    np.testing.assert_allclose(sparse[2:11], np.linspace(1, 5, 9))
    assert np.isnan(sparse[:2]).all() and np.isnan(sparse[11])


def test_fill_gaps_interior_only():
    r = np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan, np.nan, np.nan, np.nan, 9.0, np.nan])
    out = fill_gaps(r, max_gap=3)
    np.testing.assert_allclose(out[1:5], [1, 2, 3, 4])
    assert np.isnan(out[0]) and np.isnan(out[-1]) and np.isnan(out[5:9]).all()


def test_extraction_exact_on_clean_probabilities():
    b = _boundaries()
    rows = extract_boundaries(_probabilities(b, 64))
    assert rows.shape == b.shape and np.isfinite(rows).all()
    assert np.abs(rows - b).max() < 0.05


def test_extraction_continuous_across_holes_and_spurious_edges():
    b = _boundaries()
    probs = _probabilities(b, 64)
    probs[:, :, 20:26] = 0.25                          # signal loss: no information at all
    fake = _probabilities(b + np.array([[15.0], [15.0], [0.0]]), 64)
    probs[:, :, 33] = fake[:, :, 33]                   # one column with a bright edge 15 rows off
    rows = extract_boundaries(probs, max_jump=3)
    assert np.isfinite(rows).all()
    assert np.abs(np.diff(rows, axis=1)).max() <= 3 + 1.0   # continuous: bounded column steps
    outside = np.ones(b.shape[1], bool)
    outside[19:27] = False
    outside[32:35] = False
    assert np.abs(rows - b)[:, outside].max() < 0.1
    assert np.abs(rows - b)[:, 20:26].max() < 1.5            # the hole is interpolated
    assert np.abs(rows - b)[:, 33].max() < 1.5               # the spurious edge is ignored
    # ordering is kept and a long hole stays undefined when max_gap is small
    assert (np.diff(rows, axis=0) >= 0).all()
    short = extract_boundaries(probs, max_gap=2)
    assert np.isnan(short[:, 20:26]).all() and np.isfinite(short[:, :19]).all()


def test_rescale_rows_pixel_centres():
    rows = np.array([[0.5, 1.5]])
    up = rescale_rows(rows, (4, 2), (8, 4))
    np.testing.assert_allclose(up[0, [0, 3]], [1.5, 3.5])      # (r + 0.5) * 2 - 0.5
    assert up.shape == (1, 4)


def test_dice_loss_and_metric_ignore_pixels():
    labels = torch.tensor([[[0, 1], [2, -1]]])
    perfect = torch.nn.functional.one_hot(labels.clamp(min=0), 3).permute(0, 3, 1, 2).float() * 50
    assert float(masked_dice_loss(perfect, labels)) < 1e-3
    pred = torch.tensor([[0, 1], [1, 2]])
    dice = region_dice(pred, labels[0], 3)
    np.testing.assert_allclose(dice.numpy(), [1.0, 2 / 3, 0.0])

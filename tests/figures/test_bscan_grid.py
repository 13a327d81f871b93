"""The B-scan comparison grid (figures/bscan_grid.py): one panel per B-scan, a reproducible seeded
sample, each method's lines at the rows given (pixel colours read back from the rendered figure),
disagreement by hand, and titles that carry only the labels given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retinassl.figures.bscan_grid import (METHOD_STYLES, BScanPanel, boundary_grid_figure, boundary_grid_png,
                                          mean_disagreement, sample_bscans)
from retinassl.figures.plots import plt

D, W = 40, 64


def _panel(i: int, ilm: float, bm: float, shift: float) -> BScanPanel:
    image = np.full((D, W), 128, dtype=np.uint8)                 # plain grey: any colour is a line
    graph = np.stack([np.full(W, ilm), np.full(W, bm)])
    learned = graph + shift
    learned[1, :4] = np.nan                                       # undefined columns are skipped
    return BScanPanel(image, f"#{i}", {"graph search": graph, "learned": learned},
                      flags=("jumps",) if i == 1 else ())


def _rgb(fig: plt.Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def _pixel(fig: plt.Figure, rgb: np.ndarray, ax: plt.Axes, col: float, row: float) -> np.ndarray:
    x, y = ax.transData.transform((col, row))                    # display: origin bottom left
    return rgb[int(round(rgb.shape[0] - y)), int(round(x))]


def _hex(colour: str) -> np.ndarray:
    return np.array([int(colour[k:k + 2], 16) for k in (1, 3, 5)])


def test_sample_is_seeded_distinct_and_sorted():
    a, b, c = sample_bscans(675, 16, 0), sample_bscans(675, 16, 0), sample_bscans(675, 16, 1)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 16 and a.tolist() == sorted(a.tolist()) and a.max() < 675
    assert sample_bscans(5, 16, 0).tolist() == [0, 1, 2, 3, 4]   # fewer than asked: all of them
    with pytest.raises(ValueError):
        sample_bscans(0, 16, 0)


def test_mean_disagreement_by_hand():
    a = np.array([[10.0, 12.0, np.nan], [30.0, 30.0, 30.0]])
    b = np.array([[11.0, 15.0, 9.0], [30.0, np.nan, 26.0]])
    d = mean_disagreement(a, b)
    assert d["ilm"] == pytest.approx(2.0) and d["bm"] == pytest.approx(2.0) and d["mean"] == pytest.approx(2.0)
    assert np.isnan(mean_disagreement(np.full((2, 3), np.nan), b)["mean"])


def test_grid_has_one_panel_per_bscan_and_lines_at_the_rows():
    panels = [_panel(i, 8.0 + i, 28.0 - i, 6.0) for i in range(5)]
    fig = boundary_grid_figure(panels, columns=2, panel_width=3.0)
    try:
        drawn = [ax for ax in fig.axes if ax.images]
        assert len(drawn) == 5 and len(fig.axes) == 5             # the sixth grid cell removed
        rgb = _rgb(fig)
        red, cyan = _hex(METHOD_STYLES[0][0]), _hex(METHOD_STYLES[1][0])
        for ax, p in zip(drawn, panels):
            (ilm, bm) = p.boundaries["graph search"][:, 0]
            for row in (ilm, bm):                                  # the reference in its colour
                assert np.abs(_pixel(fig, rgb, ax, 40, row) - red).max() < 40
                assert np.abs(_pixel(fig, rgb, ax, 40, row + 6.0) - cyan).max() < 40
            between = _pixel(fig, rgb, ax, 40, (ilm + 6 + bm) / 2)   # no line: grey
            assert np.ptp(between) < 6 and 100 < between[0] < 156
            assert np.ptp(_pixel(fig, rgb, ax, 1, bm + 6.0)) < 6      # the learned BM undefined there
        titles = [ax.get_title(loc="left") for ax in drawn]
        assert titles[0].startswith("#0 · clean") and titles[1].startswith("#1 · jumps")
        assert titles[0].endswith("vs graph search: learned 6.0 px")
    finally:
        plt.close(fig)


def test_png_is_small_and_keeps_the_colours(tmp_path):
    panels = [_panel(i, 10.0, 30.0, 0.0) for i in range(3)]
    path = boundary_grid_png(panels, tmp_path / "grid.png", columns=3, title="test")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = _hex(METHOD_STYLES[0][0])
    assert (np.abs(image - red).max(axis=-1) < 40).sum() > 50   # the reference's lines survive quantising
    assert path.stat().st_size < 200_000


def test_bad_rows_are_refused():
    p = _panel(0, 10.0, 30.0, 0.0)
    p.boundaries["learned"] = np.zeros((2, W + 1))
    with pytest.raises(ValueError, match=r"expected \(2, 64\)"):
        boundary_grid_figure([p])
    with pytest.raises(ValueError, match="no B-scan"):
        boundary_grid_figure([])

"""Thickness per A-scan, gridding onto the fundus field, the fovea, the ETDRS grid, and DeepRT's
total-variation quality score (reproduced on DeepRT's own example maps)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

from retinassl.errors import DataError
from retinassl.oct.thickness import (ETDRS_SECTORS, MapGrid, ascan_thickness, etdrs_sector_index,
                                     etdrs_table, find_fovea, map_grid, map_quality, thickness_map,
                                     total_variation)


def test_ascan_thickness_by_hand():
    ilm = np.array([[10.0, 12.5, np.nan, 30.0]])
    bm = np.array([[30.5, 40.0, 20.0, 20.0]])
    t = ascan_thickness(ilm, bm, 0.0039)
    # (30.5 - 10) * 3.9 um = 79.95 um; (40 - 12.5) * 3.9 = 107.25; missing; BM above ILM -> NaN
    np.testing.assert_allclose(t[0, :2], [79.95, 107.25], rtol=1e-6)
    assert np.isnan(t[0, 2:]).all()


def test_map_equals_the_generators_exact_map(tiny_volumes):
    from retinassl.data.synthetic_fundus import render_eye
    from retinassl.data.synthetic_oct import render_oct
    from retinassl.oct.synthetic import synthetic_volume

    eye = render_eye(4, 96, eye="L", grade=3)
    o = render_oct(eye, 4, shape=(11, 64, 48), ir_size=64, scan_angle_deg=8.0)   # rotated raster
    v = synthetic_volume(o, eye)
    grid, warnings = map_grid(v, 128)
    assert grid.registered and warnings == []
    th = ascan_thickness(v.layers["ILM"], v.layers["BM"], v.spacing_mm[1])
    m = thickness_map(th, v.bscan_start, v.bscan_end, grid)
    ref = o.thickness_map
    assert (np.isfinite(m) == (ref > 0)).all()
    np.testing.assert_allclose(m[ref > 0], ref[ref > 0], atol=1e-3)


def test_irregular_bscan_spacing_and_holes():
    # three horizontal B-scans at y = 0, 1 and 3 with thickness 100, 200, 400 (two A-scans each)
    start = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    end = start + [4.0, 0.0]
    th = np.array([[100.0, 100.0], [200.0, 200.0], [400.0, 400.0]])
    grid = MapGrid(4, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (1.0, 1.0), True)   # pixel = position
    m = thickness_map(th, start, end, grid)
    np.testing.assert_allclose(m[:, 0], [100, 200, 300, 400])                   # y = 2 halfway
    th[2, :] = np.nan                                                           # a missing B-scan
    m = thickness_map(th, start, end, grid)
    # y = 3: only the missing B-scan; y = 2: half the weight is known, so its value is used
    assert np.isnan(m[3, 0]) and m[2, 0] == 200 and m[1, 0] == 200
    # a bidirectional raster: the middle B-scan runs right to left, its A-scans reversed
    th2 = np.array([[100.0, 140.0], [260.0, 200.0], [400.0, 440.0]])
    start2 = start.copy()
    start2[1] = [4.0, 1.0]
    end2 = end.copy()
    end2[1] = [0.0, 1.0]
    m = thickness_map(th2, start2, end2, grid)
    np.testing.assert_allclose(m[1, :], [200, 215, 230, 245], atol=1e-9)   # x = 0 .. 3 of 0 .. 4
    with pytest.raises(DataError, match="not parallel"):
        thickness_map(th, start, start + [[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]], grid)


def test_grid_falls_back_around_the_scan_when_off_the_localizer(tiny_volumes):
    v = tiny_volumes[0][0]
    v2 = type(v)(**{**v.__dict__, "bscan_start": v.bscan_start + 1000, "bscan_end": v.bscan_end + 1000})
    grid, warnings = map_grid(v2, 64)
    assert not grid.registered and "outside the infrared image" in warnings[0]
    th = ascan_thickness(v.layers["ILM"], v.layers["BM"], v.spacing_mm[1])
    m = thickness_map(th, v2.bscan_start, v2.bscan_end, grid)
    assert 0.3 < np.isfinite(m).mean() < 0.6          # the scan fills the central two thirds


def _etdrs_map(size: int, px: float, laterality: str) -> tuple[np.ndarray, tuple[float, float]]:
    centre = ((size - 1) / 2, (size - 1) / 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    idx = etdrs_sector_index((xx - centre[0]) * px, (yy - centre[1]) * px, laterality)
    return np.where(idx >= 0, 100.0 + 10 * idx, 0.0), centre


@pytest.mark.parametrize("laterality", ["R", "L"])
def test_etdrs_on_a_hand_built_map(laterality):
    # build the map independently: sector of each pixel from its angle and radius, written out
    size, px = 161, 0.04
    c = (size - 1) / 2
    m = np.zeros((size, size))
    for r in range(size):
        for col in range(size):
            dx, dy = (col - c) * px, (r - c) * px
            rad = math.hypot(dx, dy)
            if rad > 3.0:
                continue
            if rad <= 0.5:
                m[r, col] = 500
                continue
            nasal = dx if laterality == "R" else -dx
            ang = math.degrees(math.atan2(-dy, nasal))
            quad = "S" if 45 < ang <= 135 else "N" if -45 < ang <= 45 else "I" if -135 < ang <= -45 else "T"
            ring = 1 if rad <= 1.5 else 2
            m[r, col] = {"S": 200, "N": 300, "I": 400, "T": 600}[quad] + (0 if ring == 1 else 50)
    table = etdrs_table(m, (px, px), (c, c), laterality).set_index("sector")
    expected = {"C0": 500, "S1": 200, "N1": 300, "I1": 400, "T1": 600,
                "S2": 250, "N2": 350, "I2": 450, "T2": 650}
    assert list(table.index) == list(ETDRS_SECTORS)
    for sector, value in expected.items():
        assert table.at[sector, "mean_um"] == pytest.approx(value), sector
        assert table.at[sector, "valid_fraction"] == 1.0
    # volume = mean thickness x full sector area (the HEYEX convention): C0 = 0.5 mm x pi/4 mm^2
    assert table.at["C0", "volume_mm3"] == pytest.approx(0.5 * math.pi * 0.25)
    # nasal is on the image right for a right eye, on the left for a left eye
    right_of_centre = m[int(c), int(c) + 20]
    assert right_of_centre == (300 if laterality == "R" else 600)


def test_etdrs_valid_fraction_and_empty_sectors():
    m, centre = _etdrs_map(101, 0.07, "R")
    m[:, :50] = 0                                      # left half undefined
    table = etdrs_table(m, (0.07, 0.07), centre, "R").set_index("sector")
    assert np.isnan(table.at["T1", "mean_um"]) and table.at["T1", "valid_fraction"] == 0
    assert 0.45 < table.at["C0", "valid_fraction"] < 0.6
    assert isinstance(table, pd.DataFrame)


def test_find_fovea_at_the_thickness_minimum():
    size = 64
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    m = 300 - 120 * np.exp(-((xx - 37) ** 2 + (yy - 28) ** 2) / (2 * 4.0 ** 2))
    m[:8], m[:, :8] = np.nan, np.nan
    m[40, 12] = 50                                     # an outlier far from the centre
    grid = MapGrid(size, np.array([[2.0, 0, 1.0], [0, 2.0, 1.0]]), (0.05, 0.05), True)
    x, y = find_fovea(m, grid, search_mm=1.0)
    assert (x, y) == (2.0 * 37 + 1.0, 2.0 * 28 + 1.0)


def test_total_variation_reproduces_deeprt():
    folder = shared_dataset("deeprt_examples") / "thickness_map_calculation"
    tv = pd.read_csv(folder / "quality_filter" / "tv_pd.csv").set_index("id")["tv"]
    for name in ("256692_R_20160524", "337087_L_20160628"):
        m = np.load(folder / "thickness_maps" / f"{name}_466718001.npy") if name.startswith("256") \
            else np.load(folder / "thickness_maps" / f"{name}_473985001.npy")
        assert total_variation(m) == pytest.approx(tv[f"{name}.npy"], rel=1e-12)
        q = map_quality(m)
        assert q["passes"] and q["tv"] < 0.014


def test_map_quality_flags():
    m = np.full((128, 128), 0.0)
    m[20:108, 20:108] = 300.0
    assert map_quality(m)["passes"]
    noisy = m.copy()
    noisy[20:108, 20:108] += np.random.default_rng(0).normal(0, 80, (88, 88))
    assert "total variation" in map_quality(noisy)["reasons"][0]
    with_nan = m.copy()
    with_nan[50, 50] = np.nan
    q = map_quality(with_nan)
    assert not q["passes"] and q["nan_pixels"] == 1
    assert "defined" in map_quality(np.pad(np.full((4, 4), 300.0), 62))["reasons"][-1]


def test_missing_boundaries_are_a_clear_error(tiny_volumes):
    from retinassl.jobs.oct_thickness import compute_thickness

    v = tiny_volumes[0][0]
    only_ilm = type(v)(**{**v.__dict__, "layers": {"ILM": v.layers["ILM"]}, "source": "scan.vol"})
    with pytest.raises(DataError, match=r"lacks the boundaries \['BM'\]") as err:
        compute_thickness(only_ilm)
    assert "scan.vol" in str(err.value)
    empty_bm = type(v)(**{**v.__dict__, "layers": {"ILM": v.layers["ILM"],
                                                  "BM": np.full_like(v.layers["BM"], np.nan)}})
    with pytest.raises(DataError, match="lacks the boundaries"):
        compute_thickness(empty_bm)

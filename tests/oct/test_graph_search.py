"""Annotation-free ILM/BM graph search, B-scan image input and B-scan thickness: accuracy against
the synthetic generator's exact boundaries, ordering, quality flags on crafted bad scans, central
thickness on a hand-made image, and a smoke run on real MX B-scans (skipped without the data)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from retinassl.errors import ConfigError, DataError
from retinassl.oct.bscan_images import UNKNOWN_SPACING_WARNING, read_bscan_images
from retinassl.oct.bscan_thickness import bscan_thickness, eye_thickness, find_fovea_column
from retinassl.oct.graph_search import detect_boundaries, detect_volume


def _truth_rows(truth, k: int) -> np.ndarray:
    return truth.boundaries[k]                     # (n_bscans, W); ILM = 0, BM = 9


def test_synthetic_boundaries_close_to_truth_and_ordered(tiny_volumes):
    ilm_err, bm_err, clean, clean_err = [], [], 0, []
    for volume, truth in tiny_volumes:
        found = detect_volume(volume)
        assert found.spacing_stated and found.axial_um == pytest.approx(volume.spacing_mm[1] * 1000)
        e_ilm = np.abs(found.ilm - _truth_rows(truth, 0))
        e_bm = np.abs(found.bm - _truth_rows(truth, 9))
        ilm_err.append(np.nanmean(e_ilm))
        bm_err.append(np.nanmean(e_bm))
        both = np.isfinite(found.ilm) & np.isfinite(found.bm)
        assert both.mean() > 0.95
        assert (found.bm[both] > found.ilm[both]).all()          # ordering
        w = volume.shape[2]
        central = slice(w // 4, w - w // 4)              # the half the flags assess
        for i, q in enumerate(found.quality):
            if q.clean:
                clean += 1
                clean_err.append(max(e_ilm[i, central].max(), e_bm[i, central].max()))
    n = sum(v.shape[0] for v, _ in tiny_volumes)
    # rows of 20 um here: mean absolute error well under one and a half rows
    assert np.mean(ilm_err) < 1.0 and np.mean(bm_err) < 1.5
    assert clean >= 0.8 * n
    # a B-scan flagged clean has no boundary more than 5 rows (100 um) off in its central half
    assert max(clean_err) < 5.0


def test_flags_fire_on_crafted_bad_scans(tiny_volumes):
    volume, truth = tiny_volumes[1]
    ax, lat = volume.spacing_mm[1] * 1000, volume.spacing_mm[2] * 1000
    good = volume.bscans[4]
    assert detect_boundaries(good, ax, lat).quality.clean
    blank = np.full_like(good, 40)
    q = detect_boundaries(blank, ax, lat).quality
    assert q.low_contrast and not q.clean and q.contrast_ilm == 0.0
    noise = np.random.default_rng(3).integers(0, 60, good.shape).astype(np.uint8)
    assert not detect_boundaries(noise, ax, lat).quality.clean
    # shifted up so that the retina leaves the top of the image
    top = int(np.floor(np.nanmin(truth.boundaries[0, 4]))) + 3
    shifted = np.concatenate([good[top:], np.zeros((top, good.shape[1]), good.dtype)])
    q = detect_boundaries(shifted, ax, lat).quality
    assert q.at_edge and not q.clean
    # the right half moved down by a third of the depth: a step no retina has
    step = good.copy()
    d = good.shape[0]
    step[d // 3:, 32:] = good[:d - d // 3, 32:]
    step[:d // 3, 32:] = good[:d // 3, :32].mean()
    q = detect_boundaries(step, ax, lat).quality
    assert q.jumps and not q.clean


def _two_line_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 64 x 64 B-scan: vitreous (8), retina (110) from the ILM down, a bright RPE band (230) in
    the 4 rows above the BM, choroid (45) below. The ILM has a pit at column 30; the BM is flat."""
    d, w = 64, 64
    cols = np.arange(w)
    ilm = 14.0 + np.round(8 * np.exp(-((cols - 30) / 5.0) ** 2))     # integer rows: exact edges
    bm = np.full(w, 46.0)
    rows = np.arange(d)[:, None]
    img = np.full((d, w), 8.0)
    img = np.where(rows >= ilm[None], 110.0, img)
    img = np.where(rows >= bm[None] - 4, 230.0, img)
    img = np.where(rows >= bm[None], 45.0, img)
    img = img + rng.normal(0, 3, img.shape)
    # boundary rows: the edge lies between rows r - 1 and r, i.e. at r - 0.5
    return np.clip(img, 0, 255).astype(np.uint8), ilm - 0.5, bm - 0.5


def test_central_and_maximum_thickness_by_hand(rng):
    img, ilm, bm = _two_line_image(rng)
    # exact boundaries: the fovea is column 30, 46 - 22 = 24 rows thick; the maximum 46 - 14 = 32
    exact = bscan_thickness(ilm, bm, axial_um=None)
    assert exact.unit == "px" and exact.fovea_column == 30 and not exact.fovea_given
    assert exact.central == pytest.approx(24.0, abs=1e-4)
    assert exact.maximum == pytest.approx(32.0, abs=1e-4)
    in_um = bscan_thickness(ilm, bm, axial_um=5.0, fovea_column=10)
    assert in_um.unit == "um" and in_um.fovea_given and in_um.fovea_column == 10
    assert in_um.central == pytest.approx(5.0 * (46 - 14), abs=1e-3)
    # the graph search on the image finds the same numbers to within a row
    found = detect_boundaries(img, 10.0, 20.0)
    assert found.quality.clean
    np.testing.assert_allclose(found.ilm, ilm, atol=1.0)
    np.testing.assert_allclose(found.bm, bm, atol=1.0)
    measured = bscan_thickness(found.ilm, found.bm, axial_um=None)
    assert abs(measured.fovea_column - 30) <= 1
    assert measured.central == pytest.approx(24.0, abs=1.0)


def test_fovea_is_searched_in_the_central_third():
    profile = np.full(90, 50.0)
    profile[5] = 10.0                     # thinner, but outside the central third
    profile[50] = 30.0
    assert find_fovea_column(profile, smooth_columns=0) == 50
    assert find_fovea_column(np.full(90, np.nan)) is None


def _write(path, array) -> None:
    Image.fromarray(array).save(path)


def test_bscan_images_read_with_and_without_spacing(tmp_path, tiny_volumes, caplog):
    volume, truth = tiny_volumes[2]
    paths = []
    for i, suffix in enumerate((".png", ".tif", ".png")):
        p = tmp_path / f"scan{i}{suffix}"
        _write(p, volume.bscans[i])
        paths.append(p)
    with caplog.at_level(logging.WARNING):
        unknown = read_bscan_images(paths, eye="OD", patient_id="someone")
    assert unknown.shape == (3,) + volume.bscans.shape[1:]
    np.testing.assert_array_equal(unknown.bscans, volume.bscans[:3])
    assert not unknown.spacing_stated and unknown.warnings == [UNKNOWN_SPACING_WARNING]
    assert unknown.describe()["spacing_mm"] is None and unknown.laterality == "R"
    assert unknown.patient_key.startswith("pk-") and "someone" not in str(unknown.describe())
    assert "pixel spacing unknown" in caplog.text and "scan0" not in caplog.text
    eye = eye_thickness(unknown, detect_volume(unknown))
    summary = eye.summary()
    assert summary["unit"] == "px" and summary["axial_um"] is None and summary["n_bscans"] == 3
    assert UNKNOWN_SPACING_WARNING in summary["warnings"]
    ax, lat = volume.spacing_mm[1] * 1000, volume.spacing_mm[2] * 1000
    stated = read_bscan_images(paths, axial_um=ax, lateral_um=lat)
    assert stated.spacing_stated and stated.warnings == []
    assert stated.describe()["spacing_mm"][1] == pytest.approx(ax / 1000)
    eye_um = eye_thickness(stated, detect_volume(stated))
    s_um = eye_um.summary()
    assert s_um["unit"] == "um" and s_um["axial_um"] == pytest.approx(ax)
    # micrometres against the generator's exact thickness
    true_th = truth.thickness[:3]
    for b, t in zip(eye_um.bscans, true_th):
        assert np.nanmean(np.abs(b.profile - t)) < 1.5 * ax


def test_bscan_images_bad_input(tmp_path):
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    _write(a, np.zeros((40, 50), np.uint8))
    _write(b, np.zeros((41, 50), np.uint8))
    with pytest.raises(DataError, match="differs from the first image") as err:
        read_bscan_images([a, b])
    assert "b.png" in str(err.value)
    with pytest.raises(ConfigError, match="both"):
        read_bscan_images([a], axial_um=3.9)
    with pytest.raises(ConfigError, match="positive"):
        read_bscan_images([a], axial_um=3.9, lateral_um=0)
    with pytest.raises(DataError, match="does not exist"):
        read_bscan_images(tmp_path / "missing.png")
    pages = tmp_path / "stack.tif"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(
        pages, save_all=True, append_images=[Image.fromarray(np.ones((40, 50), np.uint8))])
    with pytest.raises(DataError, match="multi-page TIFF"):
        read_bscan_images(pages)


def test_real_mx_bscans_mostly_clean_and_plausible():
    from conftest import shared_dataset

    folder = shared_dataset("mx_fundus_oct") / "oct"
    files = sorted(folder.glob("*.jpg"))
    if len(files) < 10:
        pytest.skip("fewer than 10 MX B-scans")
    pick = np.random.default_rng(0).choice(len(files), 10, replace=False)
    volume = read_bscan_images([files[i] for i in pick])          # spacing unknown: pixels
    found = detect_volume(volume)
    eye = eye_thickness(volume, found)
    clean = [b for b in eye.bscans if b.clean]
    assert len(clean) >= 7
    for b in clean:
        # 287-row images, one row ~ 7 um: a retina of 20-120 rows (about 150-900 um)
        assert b.unit == "px" and 20 <= b.central <= 120 and b.central <= b.maximum <= 150


def test_read_volume_dispatches_single_bscan_images(tmp_path):
    from retinassl.oct.read import read_volume

    img = np.random.default_rng(1).integers(0, 255, (30, 40)).astype(np.uint8)
    for suffix in (".png", ".jpg", ".tif"):
        path = tmp_path / f"one{suffix}"
        _write(path, img)
        v = read_volume(path)
        assert v.format == "bscan-images" and v.shape == (1, 30, 40) and not v.spacing_stated
    v = read_volume(tmp_path / "one.png", axial_um=3.87, lateral_um=11.5)
    assert v.spacing_stated and v.spacing_mm[1:] == pytest.approx((0.00387, 0.0115))


def _layered_bscan(rng, ilm: np.ndarray, dim_to: np.ndarray, bands: list[tuple[int, int, float]], dim: float = 55.0,
                   d: int = 128) -> np.ndarray:
    """A uint8 B-scan: vitreous (8) above ``ilm``, inner retina (110) from the ILM down, dim tissue
    (55, the outer nuclear layer) from ``dim_to`` (per column) to the first band, bright
    ``(top, bottom, value)`` bands, choroid (45) below the last; Gaussian noise (sd 3)."""
    w = len(ilm)
    rows = np.arange(d)[:, None]
    img = np.where(rows >= ilm[None], 110.0, 8.0)
    img = np.where((rows >= dim_to[None]) & (rows < bands[0][0]), dim, img)
    for top, bottom, value in bands:
        img = np.where((rows >= top) & (rows < bottom), value, img)
    img = np.where(rows >= bands[-1][1], 45.0, img)
    img = img + rng.normal(0, 3, (d, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_ilm_is_not_the_outer_band_under_a_dim_foveal_pit(rng):
    """At a foveal pit whose floor has only faint tissue above the bright outer band (as dark as the
    vitreous after smoothing), the band's dark-to-bright edge looks like an ILM: nothing bright
    above it, tissue below. The ILM is searched at least ``ilm_above_band_um`` (120 um) above the
    band, so the retina keeps a plausible foveal thickness instead of the ~10 um the band edge
    gives (the failure seen on real MX B-scans before the bound)."""
    w = 160
    cols = np.arange(w)
    pit = np.exp(-((cols - 80) / 22.0) ** 2)
    ilm = np.round(30 + 34 * pit)                                   # floor at row 64
    dim_to = np.where(pit > 0.7, ilm, 70)                           # no inner retina at the floor
    image = _layered_bscan(rng, ilm, dim_to, [(84, 92, 230.0)], dim=28.0)
    found = detect_boundaries(image, axial_um=7.0, lateral_um=14.0)
    centre = slice(70, 91)
    band_edge = 83.5
    assert np.all(found.ilm[centre] <= band_edge - 120.0 / 7.0 + 0.5), found.ilm[centre]
    assert np.all(found.ilm[centre] >= 29.5)                        # not above the rim
    assert np.all(np.abs(found.bm - 91.5) < 1.5)
    # away from the pit the ILM is exact
    assert np.all(np.abs(found.ilm[:30] - 29.5) < 1.0) and np.all(np.abs(found.ilm[-30:] - 29.5) < 1.0)


def test_bm_is_under_the_lowest_outer_band(rng):
    """Two equally bright bands under the retina (photoreceptors lifted off the RPE, or a band of
    exudates over it): Bruch's membrane is the lower edge of the deeper one, the RPE."""
    w = 128
    ilm = np.full(w, 30.0)
    image = _layered_bscan(rng, ilm, np.full(w, 62.0), [(70, 76, 230.0), (76, 86, 60.0), (86, 92, 230.0)])
    found = detect_boundaries(image, axial_um=7.0, lateral_um=14.0)
    assert np.all(np.abs(found.bm - 91.5) < 1.5), found.bm
    assert np.all(np.abs(found.ilm - 29.5) < 1.0)


def test_an_ilm_held_at_its_bound_is_flagged():
    """Columns where the ILM lies at its lowest allowed cut (``ilm_above_band_um`` above the outer
    band: it was not found above it, e.g. a macular hole or a foveal floor without an edge) are
    counted over the central half; more than ``max_bound_fraction`` of them flags the B-scan, and
    undefined columns never count."""
    from retinassl.oct.boundary_quality import assess_quality
    from retinassl.oct.graph_search_config import GraphSearchConfig

    w = 200
    ilm, bm = np.full(w, 30.0), np.full(w, 70.0)
    config = GraphSearchConfig()
    at_bound = np.zeros(w, dtype=bool)
    at_bound[95:105] = True                                          # 10 of the 100 central columns
    q = assess_quality(ilm, bm, 128, 7.0, 14.0, config, 10.0, 10.0, ilm_at_bound=at_bound)
    assert q.bound_fraction == pytest.approx(0.10) and q.ilm_at_bound and q.reasons == ["ilm_at_bound"]
    at_edge_only = np.zeros(w, dtype=bool)
    at_edge_only[:20] = True                                         # outside the central half
    assert assess_quality(ilm, bm, 128, 7.0, 14.0, config, 10.0, 10.0, ilm_at_bound=at_edge_only).clean
    gap = ilm.copy()
    gap[95:105] = np.nan                                             # undefined columns do not count
    q = assess_quality(gap, bm, 128, 7.0, 14.0, config, 10.0, 10.0, ilm_at_bound=at_bound)
    assert q.bound_fraction == 0.0 and not q.ilm_at_bound

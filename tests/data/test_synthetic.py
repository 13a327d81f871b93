"""The synthetic retina generator: determinism, exact masks, labels, splits, OCT ground truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retinassl.data.imageio import read_image, read_mask
from retinassl.data.manifest import Manifest
from retinassl.data.synthetic import generate_dataset
from retinassl.data.synthetic_eye import LESION_KEYS, MASK_KEYS
from retinassl.data.synthetic_fundus import render_eye
from retinassl.data.synthetic_oct import BOUNDARY_NAMES, TINY_SHAPE, render_oct
from retinassl.data.synthetic_retina import LEAK_AREA_MM2, LEAK_MAX_UM, leakage_thickening


def _union(eye) -> np.ndarray:
    out = np.zeros(eye.image.shape[:2], bool)
    for key in LESION_KEYS:
        out |= eye.masks[key]
    return out


# -- fundus ---------------------------------------------------------------------------------------
def test_same_seed_same_eye_different_seed_differs():
    a, b = render_eye(11, 48, grade=3), render_eye(11, 48, grade=3)
    np.testing.assert_array_equal(a.image, b.image)
    for key in MASK_KEYS:
        np.testing.assert_array_equal(a.masks[key], b.masks[key])
    c = render_eye(12, 48, grade=3)
    assert not np.array_equal(a.image, c.image)
    # a Generator works as well as a seed and is the only source of randomness
    d = render_eye(np.random.default_rng(11), 48, grade=3)
    np.testing.assert_array_equal(a.image, d.image)


def test_rejects_global_rng_and_bad_arguments():
    with pytest.raises(TypeError):
        render_eye(None, 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        render_eye(0, 32, eye="X")
    with pytest.raises(ValueError):
        render_eye(0, 32, grade=5)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_lesions_change_pixels_only_inside_their_masks(size):
    for seed in range(12):
        grade = 1 + seed % 4
        eye = render_eye(seed, size, eye="RL"[seed % 2], grade=grade)
        union = _union(eye)
        changed = (eye.image != eye.lesion_free).any(axis=2)
        assert not (changed & ~union).any(), f"seed {seed}: pixels changed outside the masks"
        assert union.any() and eye.labels.abnormal == 1
        # the masks are the lesions: most mask pixels visibly differ from the lesion-free twin
        assert (changed & union).sum() >= 0.6 * union.sum(), f"seed {seed}"
        for key in LESION_KEYS:
            assert not (eye.masks[key] & ~eye.masks["fov"]).any()


def test_healthy_eyes_have_empty_lesion_masks_and_identical_twin():
    for seed in range(8):
        eye = render_eye(seed, 48, grade=0)
        assert not _union(eye).any()
        np.testing.assert_array_equal(eye.image, eye.lesion_free)
        assert eye.labels == type(eye.labels)(0, 0, 0)
        assert eye.masks["OD"].any() and eye.masks["fov"].any()


def test_healthy_twin_has_the_same_anatomy():
    sick, healthy = render_eye(5, 64, grade=3), render_eye(5, 64, grade=0)
    assert sick.anatomy == healthy.anatomy
    np.testing.assert_array_equal(sick.lesion_free, healthy.image)


def test_labels_follow_the_lesions():
    for seed in range(16):
        grade = 1 + seed % 4
        eye = render_eye(seed, 96, grade=grade)
        m, a = eye.masks, eye.anatomy
        assert eye.labels.dr_grade == grade
        if grade == 1:
            assert m["MA"].any() and not (m["HE"].any() or m["EX"].any() or m["SE"].any())
        # DME by hand: hard exudates within one disc diameter of the fovea -> 2, elsewhere -> 1
        ys, xs = np.nonzero(m["EX"])
        if len(xs) == 0:
            expected = 0
        else:
            near = min(math.hypot(x - a.fovea[0], y - a.fovea[1]) for x, y in zip(xs, ys))
            expected = 2 if near * a.pixel_mm <= a.disc_diameter_mm else 1
        assert eye.labels.dme == expected
        assert (eye.oedema is not None) == (expected == 2)


def test_prevalence_is_respected():
    n = 200
    sick = sum(render_eye(seed, 16, prevalence=0.3).labels.abnormal for seed in range(n))
    # binomial sd = sqrt(200 * 0.3 * 0.7) ~ 6.5; 4 sd tolerance
    assert abs(sick - 0.3 * n) < 26


def test_left_and_right_eyes_are_mirrored():
    for seed in range(6):
        r, l_ = render_eye(seed, 64, eye="R"), render_eye(seed, 64, eye="L")
        assert r.anatomy.od_centre[0] > r.anatomy.fovea[0]
        assert l_.anatomy.od_centre[0] < l_.anatomy.fovea[0]
        # OD mask sits on the disc centre
        for e in (r, l_):
            x, y = (int(round(c)) for c in e.anatomy.od_centre)
            assert e.masks["OD"][y, x]


def test_fov_mask_is_the_circle():
    eye = render_eye(3, 64)
    a = eye.anatomy
    yy, xx = np.mgrid[0:64, 0:64]
    circle = (xx - a.fov_centre[0]) ** 2 + (yy - a.fov_centre[1]) ** 2 <= a.fov_radius ** 2
    np.testing.assert_array_equal(eye.masks["fov"], circle)
    assert eye.image[~circle].max() <= 3            # black background (sensor floor only)


# -- OCT ------------------------------------------------------------------------------------------
def _oedema_eye():
    for seed in range(60):
        eye = render_eye(seed, 64, grade=3)
        if eye.oedema is not None:
            return eye
    raise AssertionError("no eye with macular oedema among 60 grade-3 eyes")


def test_oct_shapes_spacing_and_boundaries():
    eye = render_eye(2, 64, grade=2)
    o = render_oct(eye, 4, shape=TINY_SHAPE, ir_size=64)
    n, d, w = TINY_SHAPE
    assert o.volume.shape == TINY_SHAPE and o.volume.dtype == np.uint8
    assert o.boundaries.shape == (len(BOUNDARY_NAMES), n, w)
    assert np.all(np.diff(o.boundaries, axis=0) >= 0), "boundaries must not cross"
    assert o.boundaries.min() > 0 and o.boundaries.max() < d
    # physical extent of the Spectralis default is kept: ~5.9 mm x 5.8 mm x 1.92 mm
    assert abs(o.spacing_mm[2] * w - 0.0115 * 512) < 1e-9
    assert abs(o.spacing_mm[0] * (n - 1) - 0.12 * 48) < 1e-9
    assert abs(o.spacing_mm[1] * d - 0.00387 * 496) < 1e-9
    # B-scans centred on the fovea, ~6 mm long
    a = eye.anatomy
    centre = (o.bscan_start + o.bscan_end).mean(axis=0) / 2
    np.testing.assert_allclose(centre, a.fovea, atol=1e-6)
    length_mm = np.hypot(*(o.bscan_end[0] - o.bscan_start[0])) * a.pixel_mm
    assert abs(length_mm - o.spacing_mm[2] * (w - 1)) < 1e-6
    assert o.ir_image.shape == (64, 64) and o.ir_image.dtype == np.uint8
    # the retina is brighter than the vitreous above it
    ilm = int(o.boundaries[0].min())
    assert o.volume[:, : max(1, ilm - 2)].mean() < o.volume.mean()


def test_oct_is_seeded():
    eye = render_eye(2, 48, grade=3)
    a, b = render_oct(eye, 9, shape=TINY_SHAPE), render_oct(eye, 9, shape=TINY_SHAPE)
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.thickness_map, b.thickness_map)
    c = render_oct(eye, 10, shape=TINY_SHAPE)
    assert not np.array_equal(a.volume, c.volume)


@pytest.mark.parametrize("angle", [0.0, 12.0])
def test_thickness_is_ilm_to_bm_and_map_resamples_it(angle):
    eye = render_eye(1, 64, grade=0)
    o = render_oct(eye, 3, shape=(7, 64, 33), scan_angle_deg=angle, ir_size=32)
    ax_um = o.spacing_mm[1] * 1000
    ilm, bm = BOUNDARY_NAMES.index("ILM"), BOUNDARY_NAMES.index("BM")
    for i, j in [(0, 0), (3, 16), (6, 32), (2, 7)]:
        expected = (o.boundaries[bm, i, j] - o.boundaries[ilm, i, j]) * ax_um
        assert abs(o.thickness[i, j] - expected) < 1e-3
    # healthy macula: a foveal pit (~200-290 um) inside a thicker ring (> 300 um)
    assert 190 < o.thickness[3, 16] < 300
    assert o.thickness.max() > 310
    # map pixels checked by hand: map pixel -> fundus point -> (B-scan, A-scan) -> bilinear
    n, w = o.thickness.shape
    p0 = o.bscan_start[0]
    a_vec = (o.bscan_end[0] - o.bscan_start[0]) / (w - 1)
    b_vec = (o.bscan_start[-1] - o.bscan_start[0]) / (n - 1)
    checked = 0
    for row, col in [(64, 64), (50, 70), (80, 45), (64, 100), (10, 10), (40, 90), (90, 90)]:
        x, y = o.map_affine @ np.array([col, row, 1.0])
        d = np.array([x, y]) - p0
        # a_vec and b_vec are orthogonal: project on each
        j = d @ a_vec / (a_vec @ a_vec)
        i = d @ b_vec / (b_vec @ b_vec)
        if not (0 <= i <= n - 1 and 0 <= j <= w - 1):
            assert o.thickness_map[row, col] == 0.0
            continue
        i0, j0 = min(int(i), n - 2), min(int(j), w - 2)
        fi, fj = i - i0, j - j0
        t = o.thickness
        value = ((1 - fi) * (1 - fj) * t[i0, j0] + (1 - fi) * fj * t[i0, j0 + 1]
                 + fi * (1 - fj) * t[i0 + 1, j0] + fi * fj * t[i0 + 1, j0 + 1])
        assert abs(o.thickness_map[row, col] - value) < 1e-2
        checked += 1
    assert checked >= 4
    # DeepRT-like layout: 0 outside the scan, the scan filling about the central 2/3 of the field
    defined = o.thickness_map > 0
    assert 0.35 < defined.mean() < 0.55
    assert not defined[0].any() and not defined[:, 0].any() and defined[64, 64]
    assert not np.isnan(o.thickness_map).any()


def test_oedema_thickens_the_central_retina():
    eye = _oedema_eye()
    wet = render_oct(eye, 1, shape=TINY_SHAPE)
    dry = render_oct(eye, 1, shape=TINY_SHAPE, oedema=False)
    n, _, w = TINY_SHAPE
    centre = (slice(n // 4, 3 * n // 4 + 1), slice(w // 4, 3 * w // 4))
    assert wet.thickness[centre].mean() > dry.thickness[centre].mean() + 10
    assert np.all(wet.thickness >= dry.thickness - 1e-3)        # oedema only adds
    assert np.array_equal(wet.boundaries[-1], dry.boundaries[-1])  # same Bruch's membrane
    assert wet.thickness_map.mean() > dry.thickness_map.mean()


def test_leakage_thickening_of_one_small_lesion_matches_the_closed_form():
    eye = render_eye(5, 256, grade=0)
    a = eye.anatomy
    assert not leakage_thickening(eye, np.zeros(3), np.zeros(3)).any()      # healthy: none
    # a 3 x 3 pixel "microaneurysm" centred 1 mm temporal/nasal of the fovea
    cx, cy = int(round(a.fovea[0] + 1.0 / a.pixel_mm)), int(round(a.fovea[1]))
    eye.masks["MA"][cy - 1:cy + 2, cx - 1:cx + 2] = True
    area = 9 * a.pixel_mm ** 2                                  # mm^2, far smaller than the kernel
    u = np.array([(cx - a.fovea[0]) * a.pixel_mm, (cx - a.fovea[0]) * a.pixel_mm + 0.35, -2.0])
    v = np.array([(cy - a.fovea[1]) * a.pixel_mm] * 2 + [0.0])
    got = leakage_thickening(eye, u, v)
    # at the lesion the Gaussian-weighted area is the area; 0.35 mm away it is exp(-1/2) of it
    expected = [LEAK_MAX_UM * (1 - math.exp(-area * f / LEAK_AREA_MM2)) for f in (1.0, math.exp(-0.5))]
    np.testing.assert_allclose(got[:2], expected, rtol=0.03)
    assert got[2] < 1e-3 * got[0]                               # 3 mm away: nothing


def test_oct_thickening_is_exactly_the_leakage_in_a_dr_eye_without_oedema():
    eye = next(e for e in (render_eye(s, 128, grade=3) for s in range(40)) if e.oedema is None)
    wet = render_oct(eye, 2, shape=TINY_SHAPE)
    dry = render_oct(eye, 2, shape=TINY_SHAPE, oedema=False)
    fx = (wet.bscan_start[:, None, 0] + (wet.bscan_end - wet.bscan_start)[:, None, 0]
          * np.linspace(0, 1, TINY_SHAPE[2])[None, :] - eye.anatomy.fovea[0]) * eye.anatomy.pixel_mm
    fy = (wet.bscan_start[:, None, 1] - eye.anatomy.fovea[1]) * eye.anatomy.pixel_mm + 0 * fx
    leak = leakage_thickening(eye, fx, fy)
    assert leak.max() > 10                                      # grade 3: a real thickening
    np.testing.assert_allclose(wet.thickness - dry.thickness, leak, atol=0.05)


# -- on disk --------------------------------------------------------------------------------------
def test_generate_dataset_manifest_splits_and_files(tmp_path):
    out = tmp_path / "syn"
    m = generate_dataset(out, 14, size=48, prevalence=0.5, seed=4, with_oct=True,
                         oct_shape=(5, 48, 32), ir_size=32, map_size=64)
    assert len(m) == 14
    loaded = Manifest.load(out / "manifest.csv")
    assert loaded.ids == m.ids and loaded.root == m.root
    f = loaded.frame
    assert set(f["split"]) <= {"train", "val", "test"}
    per_patient = f.groupby("patient")["split"].nunique()
    assert (per_patient == 1).all(), "a patient is in two splits"
    assert (f.groupby("patient")["eye"].apply(lambda e: sorted(e)) == [["L", "R"]] * 7).all()
    # disease status is shared by the two eyes of a patient
    assert (f.groupby("patient")["abnormal"].nunique() == 1).all()
    for r in range(len(f)):
        img = read_image(loaded.path(r, "image"))
        assert img.array.shape == (48, 48, 3)
        lesion = np.zeros((48, 48), bool)
        for key in MASK_KEYS:
            mask = read_mask(loaded.path(r, f"mask_{key}"), expected_size=(48, 48))
            if key in LESION_KEYS:
                lesion |= mask
        assert lesion.any() == bool(f.at[r, "abnormal"])
        tmap = np.load(loaded.path(r, "thickness_map"))
        assert tmap.shape == (64, 64) and tmap.dtype == np.float32
        vol = np.load(loaded.path(r, "oct_volume"), mmap_mode="r")
        assert vol.shape == (5, 48, 32)
        side = json.loads(loaded.path(r, "oct_volume").with_suffix(".json").read_text())
        assert len(side["bscan_start"]) == 5 and len(side["spacing_mm"]) == 3
        bnd = np.load(loaded.path(r, "oct_volume").parent / side["boundaries"])
        assert bnd.shape == (10, 5, 32)
        assert read_image(loaded.path(r, "ir_image"), grayscale=True).array.shape == (32, 32)


def test_generate_dataset_is_byte_identical(tmp_path):
    kwargs = dict(size=32, prevalence=0.5, seed=9, with_oct=True, oct_shape=(3, 32, 16),
                  ir_size=16, map_size=32)
    generate_dataset(tmp_path / "a", 6, **kwargs)
    generate_dataset(tmp_path / "b", 6, workers=2, **kwargs)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                     if p.is_file() and not p.name.endswith(".root"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                     if p.is_file() and not p.name.endswith(".root"))
    assert files_a == files_b and len(files_a) == 6 * 13 + 2      # 13 files per eye
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = generate_dataset(tmp_path / "c", 6, **{**kwargs, "seed": 10})
    assert (tmp_path / "c" / other.frame.at[0, "image"]).read_bytes() != \
        (tmp_path / "a" / other.frame.at[0, "image"]).read_bytes()

"""Preprocessing geometry and the content-addressed cache: exact mapping of masks, atomic entries,
reuse without decoding, resumption after a kill, and --skip-bad."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinassl.data.cache import Cache
from retinassl.data.manifest import Manifest
from retinassl.data.field_of_view import fov_mask
from retinassl.data.harmonize import subtract_background
from retinassl.data.preprocess import PreprocessConfig, normalize
from retinassl.errors import DataError


def fundus(h: int, w: int, cx: float, cy: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """A disc on black; returns (image, fov truth)."""
    yy, xx = np.mgrid[0:h, 0:w]
    fov = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img = np.zeros((h, w, 3), np.uint8)
    img[fov] = (180, 90, 40)
    return img, fov


def make_dataset(root: Path, n: int = 3) -> Manifest:
    records = []
    for i in range(n):
        img, _ = fundus(120, 160, 80 + i, 60, 50)
        Image.fromarray(img).save(root / f"img{i}.png")
        mask = np.zeros((120, 160), bool)
        mask[60, 80 + i] = True  # one lesion pixel at the disc centre
        Image.fromarray(mask).save(root / f"mask{i}.png")
        records.append({"id": f"im{i}", "image": f"img{i}.png", "mask_MA": f"mask{i}.png",
                        "abnormal": 1})
    return Manifest.from_records(records, root)


def test_fov_mask_finds_disc() -> None:
    img, truth = fundus(200, 300, 150, 100, 90)
    found = fov_mask(img)
    assert (found != truth).mean() < 0.01


def test_crop_pad_resize_maps_mask_pixel_exactly(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, 1)
    prepared = Cache(tmp_path / "cache").prepare(manifest, PreprocessConfig(size=50, mask_outside_fov=False))
    entry = prepared.entries[0]
    geometry = entry.geometry
    # the disc (radius 50 at (80, 60)) spans x 30..130, y 10..110: a 101 px square, no padding
    # (the estimated FOV may lose the one-pixel tips of the digital circle)
    assert np.abs(np.subtract(geometry.box, (30, 10, 131, 111))).max() <= 1
    assert abs(geometry.side - 101) <= 2
    mask = np.asarray(entry.mask("mask_MA"))
    assert mask.sum() >= 1
    ys, xs = np.nonzero(mask)
    ox, oy = geometry.to_output(80, 60)
    assert abs(xs.mean() - ox) <= 1 and abs(ys.mean() - oy) <= 1
    assert entry.image().shape == (50, 50, 3)


def test_second_prepare_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_dataset(tmp_path)
    cache = Cache(tmp_path / "cache")
    cfg = PreprocessConfig(size=32)
    first = cache.prepare(manifest, cfg)
    import retinassl.data.cache as cache_module
    import retinassl.data.file_digests as digests_module

    def boom(*args, **kwargs):
        raise AssertionError("decoded an image on the second pass")

    monkeypatch.setattr(cache_module, "read_image", boom)
    monkeypatch.setattr(digests_module, "file_digest", boom)
    second = cache.prepare(manifest, cfg)
    assert [e.directory for e in first.entries] == [e.directory for e in second.entries]
    assert isinstance(second.entries[0].image(), np.memmap)


def test_content_addressing(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, 2)
    cache = Cache(tmp_path / "cache")
    a = cache.prepare(manifest, PreprocessConfig(size=32))
    b = cache.prepare(manifest, PreprocessConfig(size=32, normalize="imagenet"))
    c = cache.prepare(manifest, PreprocessConfig(size=48))
    assert a.entries[0].directory == b.entries[0].directory  # normalisation is applied at read time
    assert a.entries[0].directory != c.entries[0].directory
    # a changed file gets a new entry
    img, _ = fundus(120, 160, 70, 60, 40)
    Image.fromarray(img).save(tmp_path / "img0.png")
    os.utime(tmp_path / "img0.png", ns=(1, 1))
    d = cache.prepare(manifest, PreprocessConfig(size=32))
    assert d.entries[0].directory != a.entries[0].directory


def test_bad_image_error_and_skip_bad(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, 3)
    (tmp_path / "img1.png").write_bytes(b"garbage")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(DataError, match=r"row 1: id 'im1'.*img1.png: not a readable image"):
        cache.prepare(manifest, PreprocessConfig(size=32))
    prepared = cache.prepare(manifest, PreprocessConfig(size=32), skip_bad=True)
    assert prepared.manifest.ids == ["im0", "im2"]
    assert [i for i, _ in prepared.skipped] == ["im1"]
    # the good entries written before the error were kept
    assert all((e.directory / "entry.json").is_file() for e in prepared.entries)


def test_mask_size_mismatch_names_mask(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, 1)
    Image.fromarray(np.zeros((10, 10), bool)).save(tmp_path / "mask0.png")
    with pytest.raises(DataError, match=r"mask0.png: mask is 10x10 but its image is 160x120"):
        Cache(tmp_path / "cache").prepare(manifest, PreprocessConfig(size=32))


KILLER = """
import sys, os, signal
from pathlib import Path
import numpy as np
import retinassl.data.cache as c
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
m = Manifest.load(sys.argv[1])
real_save = np.save
calls = {"n": 0}
def dying_save(fh, arr, *a, **k):
    calls["n"] += 1
    if calls["n"] == int(sys.argv[3]):
        fh.write(b"partial")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(fh, arr, *a, **k)
c.np.save = dying_save
c.Cache(sys.argv[2]).prepare(m, PreprocessConfig(size=32))
"""


@pytest.mark.parametrize("kill_at", [2, 4])
def test_killed_mid_write_leaves_no_corrupt_entry(tmp_path: Path, kill_at: int) -> None:
    manifest = make_dataset(tmp_path, 3)
    csv = manifest.save(tmp_path / "m.csv")
    proc = subprocess.run([sys.executable, "-c", KILLER, str(csv), str(tmp_path / "cache"), str(kill_at)])
    assert proc.returncode == -signal.SIGKILL
    cache = Cache(tmp_path / "cache")
    # every complete-looking entry is loadable; no partial .npy under a final name
    for entry_json in (tmp_path / "cache").rglob("entry.json"):
        for npy in entry_json.parent.glob("*.npy"):
            np.load(npy)
    prepared = cache.prepare(manifest, PreprocessConfig(size=32))
    reference = Cache(tmp_path / "fresh").prepare(manifest, PreprocessConfig(size=32))
    for a, b in zip(prepared.entries, reference.entries):
        assert np.array_equal(a.image(), b.image())
        assert np.array_equal(a.mask("mask_MA"), b.mask("mask_MA"))


def test_normalisations() -> None:
    img = np.array([[[10, 20, 40], [20, 40, 80]]], np.uint8)
    assert np.allclose(normalize(img, "max").max(), 1.0)
    assert normalize(img, "max").shape == (3, 1, 2)
    z = normalize(img, "image")
    assert np.allclose(z.mean(axis=(1, 2)), 0, atol=1e-6)
    assert np.allclose(normalize(img, "max", {"max": 160.0})[2, 0, 1], 0.5)


def test_background_subtraction_removes_the_eye_and_keeps_the_lesion() -> None:
    """Two eyes of different colour and uneven light, with one dark 3x3 lesion: after the
    subtraction both read 128 away from the lesion (a flat eye up to its FOV border: no bright
    rim), and the lesion keeps four times its contrast to its surround."""
    h = w = 96
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot(xx - 48, yy - 48)
    fov = radius <= 40
    lesion = np.zeros_like(fov)
    lesion[46:49, 46:49] = True
    near_lesion = np.hypot(xx - 47, yy - 47) <= 10
    outs = []
    for colour, slope in (((180, 90, 40), 0.0), ((120, 70, 60), 0.0), ((180, 90, 40), 0.3),
                          ((120, 70, 60), -0.2)):
        img = np.clip(np.asarray(colour, float)[None, None, :] + slope * (xx - 48)[..., None], 0, 255)
        img[lesion] -= 10.0
        img = (img * fov[..., None]).astype(np.uint8)
        out = subtract_background(img, fov, sigma=6.0).astype(int)
        assert out.shape == img.shape and out.dtype == int
        # a flat eye reads 128 everywhere in its FOV; a lit one, 2 sigma inside the border
        far = fov & ~near_lesion & ((radius <= 28) if slope else True)
        assert np.abs(out[far] - 128).max() <= (3 if slope else 1)  # the ramp's uint8 rounding, x4
        assert np.all(out[lesion] <= 128 - 4 * 10 + 15)  # 4x the 10-level dip, less its own blur
        outs.append(out)
    assert np.abs(outs[0][fov] - outs[1][fov]).max() <= 2  # the eye's colour is gone
    assert PreprocessConfig(subtract_background=True).cache_key() != PreprocessConfig().cache_key()


def test_parallel_prepare_matches_serial(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, 4)
    a = Cache(tmp_path / "c1").prepare(manifest, PreprocessConfig(size=32), workers=2)
    b = Cache(tmp_path / "c2").prepare(manifest, PreprocessConfig(size=32), workers=1)
    for x, y in zip(a.entries, b.entries):
        assert np.array_equal(x.image(), y.image())

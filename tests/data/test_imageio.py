"""Image and mask reading: formats, reduced JPEG decoding, and clear errors for bad files."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinassl.data.imageio import read_image, read_mask
from retinassl.errors import DataError


def rgb(h: int = 64, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_reads_png_tiff_gzipped_ppm(tmp_path: Path) -> None:
    arr = rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "a.tif")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PPM")
    (tmp_path / "a.ppm.gz").write_bytes(gzip.compress(buf.getvalue()))
    for name in ("a.png", "a.tif", "a.ppm.gz"):
        decoded = read_image(tmp_path / name)
        assert np.array_equal(decoded.array, arr), name
        assert decoded.original_size == (96, 64)


def test_jpeg_reduced_decoding_keeps_min_size(tmp_path: Path) -> None:
    Image.fromarray(rgb(400, 600)).save(tmp_path / "a.jpg", quality=90)
    full = read_image(tmp_path / "a.jpg")
    half = read_image(tmp_path / "a.jpg", min_size=200)
    quarter = read_image(tmp_path / "a.jpg", min_size=100)
    assert full.array.shape == (400, 600, 3)
    assert half.array.shape == (200, 300, 3) and half.scale == 0.5
    assert quarter.array.shape == (100, 150, 3) and quarter.original_size == (600, 400)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "file is empty"),
    (lambda p: p.write_bytes(b"this is not an image at all"), "not a readable image"),
    (lambda p: _truncated_png(p), "corrupt or truncated"),
    (lambda p: Image.fromarray(rgb()).convert("CMYK").save(p.with_suffix(".tif")) or
     p.with_suffix(".tif").rename(p), "CMYK"),  # decoded by content (TIFF), refused as CMYK
    (lambda p: Image.fromarray(np.zeros((8, 8), np.uint16)).save(p), "16/32-bit"),
    (lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).save(p), "grayscale"),
])
def test_bad_images_raise_data_error_naming_file(tmp_path: Path, make, message) -> None:
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_cmyk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    Image.fromarray(rgb()).convert("CMYK").save(path)
    with pytest.raises(DataError, match="CMYK"):
        read_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")


def _truncated_png(path: Path) -> None:
    Image.fromarray(rgb(128, 128)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_masks_any_binary_encoding(tmp_path: Path) -> None:
    truth = np.zeros((10, 12), bool)
    truth[2:5, 3:9] = True
    Image.fromarray(truth).save(tmp_path / "1bit.png")
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "l.gif")
    pal = Image.fromarray(truth.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[truth] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "rgba.tif")
    for name in ("1bit.png", "l.gif", "p.png", "rgba.tif"):
        assert np.array_equal(read_mask(tmp_path / name), truth), name


def test_mask_size_mismatch_and_non_binary(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match="mask is 12x10 but its image is 24x20"):
        read_mask(tmp_path / "m.png", expected_size=(24, 20))
    grey = np.arange(120, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(grey).save(tmp_path / "g.png")
    with pytest.raises(DataError, match="mask is not binary: 120 distinct values"):
        read_mask(tmp_path / "g.png")

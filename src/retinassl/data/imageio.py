"""Reading fundus images and masks from disk, with errors that name the file and the problem.

Pillow decodes every format the public datasets use (JPEG, PNG, TIFF, GIF, PPM, and gzipped PPM as
STARE ships it). JPEGs are decoded at reduced size when the caller only needs a smaller image
(``Image.draft``: the DCT is scaled by 1/2, 1/4 or 1/8 during decoding, which is several times faster
than decoding at full size and resizing).
"""

from __future__ import annotations

import gzip
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from retinassl.data.limits import check_pixel_count
from retinassl.errors import DataError

log = logging.getLogger(__name__)

# The formats an extension promises. A file whose content is another format is decoded by its
# content (so that it reads the same whether or not the cache holds it already) with a warning,
# since a mislabelled file usually means a mix-up (e.g. a lossy JPEG saved as a ".png" mask).
_EXTENSION_FORMATS: dict[str, set[str]] = {
    ".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".tif": {"TIFF"},
    ".tiff": {"TIFF"}, ".gif": {"GIF"}, ".ppm": {"PPM"}, ".pgm": {"PPM"}, ".pbm": {"PPM"},
    ".bmp": {"BMP"},
}


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image.

    Attributes:
        array: ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint8 when read as grayscale.
        original_size: ``(width, height)`` of the image as stored (before reduced decoding).
    """

    array: np.ndarray
    original_size: tuple[int, int]

    @property
    def scale(self) -> float:
        """Decoded width / stored width (1.0 unless decoded at reduced size)."""
        return self.array.shape[1] / self.original_size[0]


# The decompressed prefix of a ``.gz`` image from which its header is read (a PPM header is a few
# dozen bytes), and the slack allowed beyond the pixel data the header announces.
_GZ_HEADER_BYTES = 64 * 1024
_GZ_MARGIN_BYTES = 1024 * 1024
# What Pillow's plugins (and gzip/zlib) raise on a bad header or stream.
_PILLOW_ERRORS = (UnidentifiedImageError, OSError, EOFError, gzip.BadGzipFile, ValueError, SyntaxError,
                  struct.error, IndexError, zlib.error)


def _raw_bytes(image: Image.Image) -> int:
    """An upper bound of the bytes the pixels of a lazily opened image occupy as stored
    uncompressed (PPM: binary samples of 1 or 2 bytes, or ASCII samples of up to 6 characters)."""
    width, height = image.size
    samples = width * height * len(image.getbands())
    per_sample = 4 if image.mode in ("I", "F") else 2 if image.mode.startswith("I;16") else 1
    for tile in getattr(image, "tile", None) or []:
        decoder, args = tile[0], tile[3]
        if decoder == "ppm_plain":
            per_sample = max(per_sample, 6)
        elif isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int) and args[1] > 255:
            per_sample = max(per_sample, 2)
    return samples * per_sample + (samples // 8 if image.mode == "1" else 0) + height * 8


def _gunzip_bounded(path: Path) -> bytes:
    """Decompress a ``.gz`` image without ever holding more than its header promises.

    The header is parsed from the first :data:`_GZ_HEADER_BYTES` of the decompressed stream; an
    image above :data:`~retinassl.data.limits.MAX_IMAGE_PIXELS` is refused there, and the rest is
    read in chunks, stopping as soon as the stream is longer than the announced pixels (plus
    :data:`_GZ_MARGIN_BYTES`): a 3 MB gzip of a huge header and gigabytes of zeros costs a few MB.
    """
    with gzip.open(path, "rb") as fh:
        data = bytearray(fh.read(_GZ_HEADER_BYTES))
        try:
            header = Image.open(io.BytesIO(bytes(data)))
        except _PILLOW_ERRORS:
            if len(data) < _GZ_HEADER_BYTES:
                return bytes(data)  # the whole stream: Image.open reports it again, by name
            raise DataError(f"not a readable image (no image header in the first "
                            f"{_GZ_HEADER_BYTES // 1024} KB of the decompressed data)", path=path) from None
        check_pixel_count(header.size, path)
        cap = _raw_bytes(header) + _GZ_MARGIN_BYTES
        while True:
            chunk = fh.read(min(1 << 20, cap + 1 - len(data)))
            if not chunk:
                return bytes(data)
            data += chunk
            if len(data) > cap:
                width, height = header.size
                raise DataError(f"decompressed data is longer than the {width}x{height} image its "
                                f"header announces (over {cap / (1 << 20):.1f} MB; a decompression "
                                f"bomb?); refused", path=path)


def _open(path: Path) -> Image.Image:
    """Open ``path`` with Pillow (transparently un-gzipping ``.gz``) without decoding pixels.

    The format is what the content says, whatever the extension (a JPEG named ``.png`` reads as the
    JPEG it is, the same way whether or not the cache already holds its pixels); a mismatch is
    logged. Images above :data:`~retinassl.data.limits.MAX_IMAGE_PIXELS` are refused here, before
    any pixel is decoded, and a ``.gz`` stream is never decompressed beyond what its header needs.
    """
    if not path.is_file():
        raise DataError("file does not exist", path=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty (0 bytes)", path=path)
    suffix = path.suffix.lower()
    try:
        with warnings.catch_warnings():  # refused below by check_pixel_count, with the size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if suffix == ".gz":
                image = Image.open(io.BytesIO(_gunzip_bounded(path)))
                suffix = Path(path.stem).suffix.lower()
            else:
                image = Image.open(path)
    except Image.DecompressionBombError as exc:  # Pillow's own check, at twice the limit
        raise DataError(f"image is implausibly large ({exc}); refused before decoding",
                        path=path) from None
    except _PILLOW_ERRORS as exc:
        raise DataError(f"not a readable image ({type(exc).__name__}: {exc})", path=path) from None
    check_pixel_count(image.size, path)
    expected = _EXTENSION_FORMATS.get(suffix)
    if expected is not None and image.format not in expected:
        log.warning("%s: content is %s but the extension says %r; read as %s", path, image.format,
                    suffix, image.format)
    return image


def _load_pixels(image: Image.Image, path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
            Image.DecompressionBombWarning) as exc:
        raise DataError(f"image data is corrupt or truncated ({exc})", path=path) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the header, without decoding pixels."""
    path = Path(path)
    return _open(path).size


def read_image(path: str | Path, min_size: int | None = None, grayscale: bool = False) -> DecodedImage:
    """Decode an 8-bit colour (or, with ``grayscale``, single-channel) image.

    Args:
        path: image file (JPEG, PNG, TIFF, GIF, PPM, optionally ``.gz``).
        min_size: if given, a JPEG may be decoded at reduced size as long as its shorter side stays
            at least ``min_size`` pixels.
        grayscale: read a single-channel image (infrared fundus, OCT B-scans). Colour images are
            converted to luminance.

    Returns:
        :class:`DecodedImage` with ``array`` of shape ``(H, W, 3)`` (or ``(H, W)``), dtype uint8.

    Raises:
        DataError: missing, empty, corrupt or truncated file; content not matching the extension;
            a 16-bit, CMYK or grayscale image where 8-bit RGB is expected.
    """
    path = Path(path)
    image = _open(path)
    original_size = image.size
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F") or (
            image.format == "PNG" and image.info.get("bitdepth", 8) == 16):
        raise DataError(f"image has {mode} (16/32-bit) pixels; retinassl reads 8-bit fundus "
                        f"images: convert it to 8 bits per channel", path=path)
    if mode == "CMYK":
        raise DataError("image is CMYK; fundus images are expected in RGB: convert it", path=path)
    if not grayscale and mode in ("L", "LA", "1"):
        raise DataError(f"image is grayscale (mode {mode}) but colour RGB is expected; for infrared "
                        f"or grayscale data set preprocess.channels: 1", path=path)
    if min_size is not None and image.format == "JPEG":
        w, h = original_size
        factor = max(1, min(w, h) // max(1, min_size))
        if factor >= 2:
            image.draft("L" if grayscale else "RGB", (w // factor, h // factor))
    _load_pixels(image, path)
    if grayscale:
        image = image.convert("L")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return DecodedImage(np.ascontiguousarray(array), original_size)


def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a binary mask into a boolean ``(H, W)`` array.

    Any mode is accepted (1-bit, 8-bit, palette indices, RGB/RGBA where any channel marks the
    foreground), as long as the mask is binary: at most two distinct values, one of them 0.

    Args:
        path: mask file.
        expected_size: ``(width, height)`` of the image the mask belongs to; a mismatch is an error.

    Raises:
        DataError: unreadable file, size mismatch, or more than two distinct values.
    """
    path = Path(path)
    image = _open(path)
    if expected_size is not None and tuple(image.size) != tuple(expected_size):
        raise DataError(f"mask is {image.size[0]}x{image.size[1]} but its image is "
                        f"{expected_size[0]}x{expected_size[1]}", path=path)
    _load_pixels(image, path)
    array = np.asarray(image)
    if array.ndim == 3:
        channels = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        array = channels.max(axis=2)
    values = np.unique(array)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6])
        raise DataError(f"mask is not binary: {len(values)} distinct values ({shown}"
                        f"{', ...' if len(values) > 6 else ''}); expected 0 and one other value",
                        path=path)
    return array > 0

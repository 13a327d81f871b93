"""Reading fundus images and masks from disk, with errors that name the file and the problem.

Pillow decodes every format the public datasets use (JPEG, PNG, TIFF, GIF, PPM, and gzipped PPM as
STARE ships it). JPEGs are decoded at reduced size when the caller only needs a smaller image
(``Image.draft``: the DCT is scaled by 1/2, 1/4 or 1/8 during decoding, which is several times faster
than decoding at full size and resizing).
"""

from __future__ import annotations

import gzip
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

# The formats an extension promises; a file whose content is another format is refused, since a
# mislabelled file usually means a mix-up (e.g. a lossy JPEG saved as a ".png" mask).
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


def _open(path: Path) -> Image.Image:
    """Open ``path`` with Pillow (transparently un-gzipping ``.gz``), checking format vs extension."""
    if not path.is_file():
        raise DataError("file does not exist", path=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty (0 bytes)", path=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
            image = Image.open(io.BytesIO(data))
            suffix = Path(path.stem).suffix.lower()
        else:
            image = Image.open(path)
    except (UnidentifiedImageError, OSError, EOFError, gzip.BadGzipFile, ValueError, SyntaxError,
            struct.error, IndexError) as exc:  # Pillow's plugins raise all of these on bad headers
        raise DataError(f"not a readable image ({type(exc).__name__}: {exc})", path=path) from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image is implausibly large ({exc})", path=path) from None
    expected = _EXTENSION_FORMATS.get(suffix)
    if expected is not None and image.format not in expected:
        raise DataError(f"content is {image.format} but the extension says {suffix!r}; rename or "
                        f"re-export the file", path=path)
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

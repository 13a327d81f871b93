"""Bounds on what a request may cost before any work starts: image dimensions, memory and disk.

Hostile or careless input (a decompression bomb, ``preprocess.size=100000``, a synthetic dataset of
a billion images) must end in a clear error naming the file or option, not in a machine driven
into swap or a raw ``MemoryError`` minutes later. This module holds the limits and the estimates:

- :data:`MAX_IMAGE_PIXELS` (Pillow's own decompression-bomb threshold, about 89 megapixels: four
  times the largest fundus cameras) is checked from the image header before any pixel is decoded;
- :func:`check_image_shape`: a fundus photograph is at least :data:`MIN_IMAGE_SIDE` pixels on its
  shorter side and at most :data:`MAX_ASPECT` times wider than high (or the reverse);
- :func:`check_budget` compares an estimate of the memory and disk a request needs with what the
  machine has (``MemAvailable``, the address-space limit of this process, free disk space) and
  refuses with a :class:`~retinassl.errors.ConfigError` naming the option. Setting the environment
  variable ``RETINASSL_ALLOW_LARGE=1`` turns the refusal into a logged warning (for machines
  whose swap or lazily-allocated memory the estimate cannot see).

The estimates are deliberately lower bounds of the true cost (the arrays the request must hold,
measured per pixel on this code), so a refusal means the request cannot fit.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from retinassl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Images above this many pixels are refused before decoding (Pillow's ``MAX_IMAGE_PIXELS``
#: default, ``1024 * 1024 * 1024 // 4 // 3``).
MAX_IMAGE_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
#: The shorter side of an image the fundus preprocessing accepts, in pixels.
MIN_IMAGE_SIDE: int = 16
#: The largest width/height (or height/width) ratio the fundus preprocessing accepts.
MAX_ASPECT: float = 4.0
#: The environment variable that lets a request exceed the memory/disk estimate (warning only).
ALLOW_LARGE_ENV: str = "RETINASSL_ALLOW_LARGE"

# Measured on this code (tracemalloc peaks of generate_dataset at 128, 256 and 512 px):
# rendering one synthetic eye holds ~155-162 bytes per pixel at its peak; its files take
# ~1.6-1.9 bytes per pixel (PNG image + 1-bit masks); a generated row (job, manifest row and
# frame) ~14 KB.
SYNTHETIC_RENDER_BYTES_PER_PIXEL: int = 150
SYNTHETIC_DISK_BYTES_PER_PIXEL: float = 1.5
SYNTHETIC_BYTES_PER_ROW: int = 8 * 1024
# Preprocessing one image holds at least the output as float32 for background subtraction /
# CLAHE (4 bytes per channel) plus the uint8 output and FOV: a lower bound of 6 bytes per
# channel-pixel.
PREPROCESS_BYTES_PER_CHANNEL_PIXEL: int = 6


def check_pixel_count(size: tuple[int, int], path: str | Path | None = None) -> None:
    """Refuse an image of more than :data:`MAX_IMAGE_PIXELS` (``size``: ``(width, height)`` from
    its header, so that nothing is decoded yet).

    Raises:
        DataError: naming the file, its size and the limit.
    """
    width, height = int(size[0]), int(size[1])
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"image is {width}x{height} ({width * height / 1e6:.0f} megapixels), above "
                        f"the {MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit (a decompression bomb or "
                        f"not a fundus image); refused before decoding", path=path)


def check_image_shape(size: tuple[int, int], path: str | Path | None = None) -> None:
    """Refuse an image that cannot be a fundus photograph: a side below :data:`MIN_IMAGE_SIDE`
    pixels, an aspect ratio beyond :data:`MAX_ASPECT`, or more than :data:`MAX_IMAGE_PIXELS`.

    Args:
        size: ``(width, height)`` as stored.
        path: the file, named in the error.

    Raises:
        DataError: naming the file, its size and the limit.
    """
    check_pixel_count(size, path)
    width, height = int(size[0]), int(size[1])
    if min(width, height) < MIN_IMAGE_SIDE:
        raise DataError(f"image is {width}x{height} pixels; a fundus image needs at least "
                        f"{MIN_IMAGE_SIDE} pixels on its shorter side", path=path)
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise DataError(f"image is {width}x{height} pixels (aspect ratio {aspect:.1f}); a fundus "
                        f"image is at most {MAX_ASPECT:g} times wider than high", path=path)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_left() -> int | None:
    """Bytes this process may still map under ``RLIMIT_AS`` (None: no limit)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def available_memory() -> int:
    """Bytes of memory a request can still use: ``MemAvailable`` (else free pages from
    ``os.sysconf``), capped by what ``RLIMIT_AS`` leaves this process."""
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 1 << 62
    left = _address_space_left()
    return available if left is None else min(available, left)


def free_disk(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    target = Path(path).absolute()
    while not target.exists() and target.parent != target:
        target = target.parent
    return shutil.disk_usage(target).free


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def allow_large() -> bool:
    """Whether ``RETINASSL_ALLOW_LARGE`` is set to a true value (1, true, yes)."""
    return os.environ.get(ALLOW_LARGE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_budget(what: str, options: str, *, memory: float = 0, disk: float = 0,
                 disk_path: str | Path | None = None) -> None:
    """Refuse a request whose estimated memory or disk need exceeds what the machine has.

    Args:
        what: the request in words (``"a synthetic dataset of 1000000000 images of 512 px"``).
        options: the options that set its size, named in the message (``"data.options.n_images,
            data.options.size"``).
        memory: estimated peak bytes of memory (a lower bound).
        disk: estimated bytes written under ``disk_path``.
        disk_path: where the files go.

    Raises:
        ConfigError: naming the request, the options, the estimate, what is available and the
            override; unless ``RETINASSL_ALLOW_LARGE=1``, which logs a warning instead.
    """
    problems = []
    if memory > 0:
        have = available_memory()
        if memory > have:
            problems.append(f"needs at least {_human(memory)} of memory, {_human(have)} is available")
    if disk > 0 and disk_path is not None:
        have = free_disk(disk_path)
        if disk > have:
            problems.append(f"needs at least {_human(disk)} of disk under {disk_path}, "
                            f"{_human(have)} is free")
    if not problems:
        return
    message = f"{what} {' and '.join(problems)}; reduce {options}"
    if allow_large():
        log.warning("%s (going ahead: %s is set)", message, ALLOW_LARGE_ENV)
        return
    raise ConfigError(f"{message} (or set {ALLOW_LARGE_ENV}=1 to try anyway)")


def synthetic_cost(n_images: int, size: int, workers: int = 1,
                   oct_voxels: int = 0) -> tuple[float, float]:
    """``(memory, disk)`` bytes a synthetic dataset of ``n_images`` eyes of ``size`` px needs
    (lower bounds; ``oct_voxels``: voxels of one OCT volume when ``with_oct``)."""
    pixels = float(size) * float(size)
    memory = (SYNTHETIC_RENDER_BYTES_PER_PIXEL * pixels * max(1, workers)
              + SYNTHETIC_BYTES_PER_ROW * float(n_images))
    disk = float(n_images) * (SYNTHETIC_DISK_BYTES_PER_PIXEL * pixels + oct_voxels)
    return memory, disk


def preprocess_cost(n_images: int, size: int, channels: int, n_masks: int = 0,
                    workers: int = 1) -> tuple[float, float]:
    """``(memory, disk)`` bytes preparing ``n_images`` cache entries of ``size`` px needs: each
    worker's working arrays, and per entry the uint8 ``(S, S, C)`` image, the FOV and the masks."""
    pixels = float(size) * float(size)
    memory = PREPROCESS_BYTES_PER_CHANNEL_PIXEL * pixels * channels * max(1, workers)
    disk = float(n_images) * pixels * (channels + 1 + n_masks)
    return memory, disk


def batch_cost(batch_size: int, size: int, channels: int) -> float:
    """Bytes one training batch's float32 input ``(B, C, S, S)`` takes twice over (the batch and
    its normalised copy): a lower bound of training memory, before any activation."""
    return 2.0 * 4.0 * batch_size * channels * float(size) * float(size)


def check_batch_memory(batch_size: int, size: int, channels: int) -> None:
    """Refuse a training run whose batches cannot fit: :func:`batch_cost` (the collated float32
    batch and the samples it is stacked from) against :func:`available_memory`. Called before
    training starts (``preprocess.size=8192`` with ``engine.batch_size=64`` needs 96 GiB).

    Raises:
        ConfigError: naming ``engine.batch_size`` and ``preprocess.size`` (unless
            ``RETINASSL_ALLOW_LARGE=1``).
    """
    check_budget(f"training batches of {batch_size} images of {size} px", "engine.batch_size or "
                 "preprocess.size", memory=batch_cost(batch_size, size, channels))


__all__ = ["MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE", "MAX_ASPECT", "ALLOW_LARGE_ENV", "check_pixel_count",
           "check_image_shape",
           "available_memory", "free_disk", "allow_large", "check_budget", "synthetic_cost",
           "preprocess_cost", "batch_cost", "check_batch_memory"]

"""Finding image files on disk: known extensions, stems of multi-suffix names, safe ids.

Small helpers shared by the dataset sources; nothing here reads pixels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from retinassl.data.manifest import is_missing

# Extensions a source accepts as images (lower case; ".gz" only as in STARE's ".ppm.gz").
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif",
                                     ".ppm", ".pgm", ".ppm.gz", ".pgm.gz")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_suffix(name: str) -> str | None:
    """The image extension of a file name (``".ppm.gz"`` for ``im0001.ppm.gz``), or None."""
    lower = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(lower) > len(ext):
            return ext
    return None


def stem(name: str) -> str:
    """The file name without its image extension (``im0001`` for ``im0001.ppm.gz``)."""
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def is_image(path: Path) -> bool:
    """True for a regular, non-hidden file with an image extension."""
    return path.is_file() and not path.name.startswith(".") and image_suffix(path.name) is not None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)


def safe_id(*parts: object) -> str:
    """Join ``parts`` with ``-`` into a manifest id, replacing characters an id may not hold."""
    text = "-".join(_UNSAFE.sub("_", str(p)).strip("_") for p in parts if not is_missing(p))
    text = text.lstrip("._-")
    return text or "item"


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (lexically: symbolic links inside the
    dataset folder are kept, not followed)."""
    return Path(os.path.relpath(path.absolute(), root.absolute())).as_posix()


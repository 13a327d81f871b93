"""A corpus of bad inputs, generated on the fly (nothing binary is committed): each case is a small
dataset folder whose manifest has one good row and one bad row (or a bad manifest / config), with the
words its error message must contain."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 48


def fundus(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A bright disc on black (what the FOV detector expects), uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 2 - 3) ** 2
    image = np.zeros((size, size, 3), np.uint8)
    image[disc] = (170, 80, 40)
    image[disc] += rng.integers(0, 30, (int(disc.sum()), 3), dtype=np.uint8)
    return image


def png_bytes(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png16_bytes(size: int = SIZE) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(size * size, dtype=np.uint16).reshape(size, size) * 17)).save(buf, format="PNG")
    return buf.getvalue()


def gzip_ppm_bomb(width: int = 20000, height: int = 50000, zeros: int = 3 << 30) -> bytes:
    """A ~3 MB gzip whose stream is a ``P6 width height 255`` header and ``zeros`` zero bytes
    (3 GiB by default), made in a fraction of a second: gzip members concatenate, so one
    compressed 16 MiB block of zeros is repeated."""
    block = 16 << 20
    member = gzip.compress(bytes(block), compresslevel=9, mtime=0)
    head = gzip.compress(f"P6 {width} {height} 255\n".encode(), mtime=0)
    return head + member * (zeros // block)


def png_bomb(width: int, height: int) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` black pixels whose IDAT is tiny (a zlib stream of
    zeros built from one full-flushed block repeated, with the right Adler-32), e.g. 10000x10000:
    300 MB of pixels in ~300 KB."""
    row = 3 * width + 1                      # filter byte + RGB samples
    rows_per_block = max(1, (4 << 20) // row)
    compressor = zlib.compressobj(9)
    first = compressor.compress(bytes(row * rows_per_block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(bytes(row * rows_per_block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, rows_per_block)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate for the remainder, final block
    last = tail.compress(bytes(row * rest)) + tail.flush() if rest else b"\x03\x00"
    total = row * height
    adler = ((total % 65521) << 16) | 1       # Adler-32 of `total` zero bytes: a = 1, b = total
    stream = first + again * (full - 1) + last + struct.pack(">I", adler) if full else \
        zlib.compress(bytes(total), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


def alias_bomb_yaml(levels: int = 8, fan: int = 9) -> str:
    """The "billion laughs" YAML: ``levels`` nested lists of ``fan`` aliases of the level below
    (8 x 9: about 500 bytes that expand to 9**9 = 387 million strings)."""
    lines = ["lol0: &lol0 [" + ", ".join(['"lol"'] * fan) + "]"]
    for level in range(1, levels + 1):
        lines.append(f"lol{level}: &lol{level} [" + ", ".join([f"*lol{level - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    """One bad input.

    Attributes:
        name: the case.
        bad_file: file name of the bad image (relative to the dataset root), or None for a
            manifest-level problem.
        content: bytes of the bad file (or None).
        row_update: columns of the bad row (row 1) to set, e.g. a mask column or a bad label.
        needles: words the error message must contain (besides file and row).
        skippable: whether ``--skip-bad`` skips the row (image problems) rather than refusing the
            manifest (manifest problems: the table itself must be fixed).
        manifest_text: a whole manifest CSV replacing the generated one.
    """

    name: str
    bad_file: str | None
    content: bytes | Callable[[], bytes] | None
    row_update: dict[str, object] = field(default_factory=dict)
    needles: tuple[str, ...] = ()
    skippable: bool = True
    manifest_text: str | None = None


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def cases() -> list[Case]:
    good = fundus(1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:24, 20:24] = 255
    nonbinary = mask.copy()
    nonbinary[30:32, 30:32] = 128
    return [
        Case("zero-byte-png", "bad.png", b"", needles=("empty", "0 bytes")),
        Case("zero-byte-jpeg", "bad.jpg", b"", needles=("empty",)),
        Case("truncated-jpeg", "bad.jpg", lambda: _truncated(jpeg_bytes(good)), needles=("truncated",)),
        Case("truncated-png", "bad.png", lambda: _truncated(png_bytes(good)), needles=("truncated",)),
        Case("random-bytes-png", "bad.png", bytes(range(256)) * 4, needles=("not a readable image",)),
        # (a PNG named .jpg is no longer refused: images are decoded by content, see
        # test_hostile_input.py::test_mislabelled_image_reads_the_same_whatever_the_cache_holds)
        Case("cmyk-jpeg", "bad.jpg", lambda: jpeg_bytes(good, "CMYK"), needles=("CMYK",)),
        Case("16-bit-png", "bad.png", lambda: png16_bytes(), needles=("16",)),
        Case("grayscale-where-rgb", "bad.png", lambda: png_bytes(good[..., 1]), needles=("grayscale",)),
        Case("mask-size-differs", "bad_mask.png", lambda: png_bytes(np.zeros((SIZE // 2, SIZE), np.uint8)),
             row_update={"mask_MA": "bad_mask.png"}, needles=("mask is", "but its image is")),
        Case("non-binary-mask", "bad_mask.png", lambda: png_bytes(nonbinary),
             row_update={"mask_MA": "bad_mask.png"}, needles=("not binary",)),
        Case("missing-file", None, None, row_update={"image": "nowhere.png"},
             needles=("does not exist",), skippable=False),
        Case("missing-columns", None, None, manifest_text="id,image\na,good.png\n",
             needles=("missing required column",), skippable=False),
        Case("duplicate-ids", None, None, row_update={"id": "good"}, needles=("duplicate id",),
             skippable=False),
        Case("nan-label", None, None, row_update={"abnormal": "nan"}, needles=("abnormal", "nan"),
             skippable=False),
        Case("inf-label", None, None, row_update={"dr_grade": "inf"}, needles=("dr_grade",), skippable=False),
        Case("out-of-range-label", None, None, row_update={"dr_grade": 7},
             needles=("dr_grade", "7", "[0, 4]"), skippable=False),
        Case("non-numeric-label", None, None, row_update={"abnormal": "yes"},
             needles=("abnormal", "not a number"), skippable=False),
        Case("path-escapes-root", None, None, row_update={"image": "../outside.png"},
             needles=("escapes the dataset root",), skippable=False),
        Case("absolute-path", None, None, row_update={"image": "/etc/hostname"},
             needles=("escapes the dataset root",), skippable=False),
        Case("bad-split", None, None, row_update={"split": "training-set"}, needles=("split",),
             skippable=False),
        Case("unsafe-id", None, None, row_update={"id": "../../x"}, needles=("not a safe name",),
             skippable=False),
        # issue 21: decompression bombs, refused from the header (memory bound: test_hostile_input.py)
        Case("gzip-bomb-ppm", "bad.ppm.gz", lambda: gzip_ppm_bomb(),
             needles=("decompression bomb",)),
        Case("gzip-overlong-ppm", "bad.ppm.gz", lambda: gzip_ppm_bomb(64, 64, 64 << 20),
             needles=("longer than the 64x64 image",)),
        Case("png-100-megapixel", "bad.png", lambda: png_bomb(10000, 10000),
             needles=("10000x10000", "decompression bomb")),
        Case("png-400-megapixel", "bad.png", lambda: png_bomb(20000, 20000),
             needles=("decompression bomb",)),
        # issue 21 (9): images no fundus photograph can be
        Case("1x1-image", "bad.png", lambda: png_bytes(np.full((1, 1, 3), 200, np.uint8)),
             needles=("1x1", "at least 16")),
        Case("4000x2-image", "bad.png", lambda: png_bytes(np.full((2, 4000, 3), 200, np.uint8)),
             needles=("4000x2",)),
        Case("aspect-10-image", "bad.png", lambda: png_bytes(np.full((40, 400, 3), 200, np.uint8)),
             needles=("aspect ratio 10",)),
    ]


CASES = {c.name: c for c in cases()}


def write_case(root: Path, case: Case) -> Path:
    """Write ``root/`` with ``good.png`` (+ mask), the bad file, and ``manifest.csv`` (two rows:
    ``good`` then ``bad``); returns the manifest path."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    (root / "good.png").write_bytes(png_bytes(fundus(0)))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:24, 20:24] = 255
    (root / "good_mask.png").write_bytes(png_bytes(mask))
    (root.parent / "outside.png").write_bytes(png_bytes(fundus(2)))
    rows = [{"id": "good", "image": "good.png", "patient": "p0", "eye": "L", "split": "train",
             "abnormal": 1, "dr_grade": 2, "mask_MA": "good_mask.png"},
            {"id": "bad", "image": "good2.png", "patient": "p1", "eye": "R", "split": "train",
             "abnormal": 0, "dr_grade": 0, "mask_MA": ""}]
    (root / "good2.png").write_bytes(png_bytes(fundus(3)))
    if case.bad_file is not None:
        content = case.content() if callable(case.content) else case.content
        (root / case.bad_file).write_bytes(content or b"")
        if not case.row_update:
            rows[1]["image"] = case.bad_file
    rows[1].update(case.row_update)
    manifest = root / "manifest.csv"
    if case.manifest_text is not None:
        manifest.write_text(case.manifest_text)
    else:
        pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest

"""A corpus of bad inputs, generated on the fly (nothing binary is committed): each case is a small
dataset folder whose manifest has one good row and one bad row (or a bad manifest / config), with the
words its error message must contain."""

from __future__ import annotations

import io
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
        Case("wrong-extension", "bad.jpg", lambda: png_bytes(good), needles=("PNG", "extension")),
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

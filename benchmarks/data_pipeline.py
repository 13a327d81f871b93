"""Data pipeline throughput on real IDRiD images (issue 2's benchmark).

Measures, side by side on the same images:
- the toolkit's default preprocessing (reduced-size JPEG decoding, FOV crop, square pad, resize, cache
  write) vs a naive Pillow decode at full size + resize, in images/s;
- second-epoch reads from the cache (memory-mapped arrays + normalisation) vs decoding again.

Usage: python benchmarks/data_pipeline.py [--images 60] [--size 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import SHARED_DATA, write_results
from retinassl.data.cache import Cache
from retinassl.data.datasets import ImageDataset
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig


def naive(path: Path, size: int) -> np.ndarray:
    """What a first script does: decode at full size, resize, normalise."""
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    folder = SHARED_DATA / "idrid" / "B. Disease Grading" / "1. Original Images" / "a. Training Set"
    if not folder.is_dir():
        raise SystemExit(f"IDRiD not found at {folder}")
    files = sorted(folder.glob("*.jpg"))[: args.images]
    manifest = Manifest.from_records([{"id": f"b{i}", "image": p.name} for i, p in enumerate(files)], folder)
    config = PreprocessConfig(size=args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp) / "cache")
        cache.memo.digests([folder / p for p in manifest.frame["image"]])  # hash once, as in a second run
        # alternate the two in chunks so load changes affect both alike
        chunks = np.array_split(np.arange(len(files)), 6)
        t_default = t_naive = 0.0
        for chunk in chunks:
            start = time.perf_counter()
            cache.prepare(manifest.subset(chunk), config)
            t_default += time.perf_counter() - start
            start = time.perf_counter()
            for i in chunk:
                naive(files[i], args.size)
            t_naive += time.perf_counter() - start
        prepared = cache.prepare(manifest, config)
        dataset = ImageDataset(prepared)
        start = time.perf_counter()
        for _ in range(3):
            for i in range(len(dataset)):
                dataset[i]
        t_cached = (time.perf_counter() - start) / 3
    n = len(files)
    rows = {"images": n, "size": args.size,
            "default_preprocess_images_per_s": n / t_default,
            "naive_pillow_images_per_s": n / t_naive,
            "speedup_default_vs_naive": t_naive / t_default,
            "cached_read_images_per_s": n / t_cached,
            "speedup_cached_vs_naive": t_naive / t_cached}
    table = ("| path | images/s | vs naive |\n|---|---|---|\n"
             f"| naive Pillow full decode + resize | {rows['naive_pillow_images_per_s']:.1f} | 1.00x |\n"
             f"| retinassl preprocess (reduced JPEG decode, FOV crop, resize, cache write) | "
             f"{rows['default_preprocess_images_per_s']:.1f} | {rows['speedup_default_vs_naive']:.2f}x |\n"
             f"| retinassl second epoch (memory-mapped cache + normalise) | "
             f"{rows['cached_read_images_per_s']:.1f} | {rows['speedup_cached_vs_naive']:.1f}x |\n"
             f"\n{n} IDRiD part-B JPEGs (2144x1424), output {args.size} px, one process.\n")
    write_results("data_pipeline", rows, table)
    print(table)


if __name__ == "__main__":
    main()

"""Pretraining throughput of every pretraining method: the toolkit (``engine.fit``) vs the same
network and loss in a bare PyTorch loop (issue 4's benchmark; target: within 15 %).

Both sides use the same method object (``method.loss`` for each optimizer group, in order), the same
dataset (synthetic fundus images through the preprocessing cache and ``ImageDataset``, repeated so
that no epoch ends inside the timed steps), the same batch, and the engine's CPU numerics
(channels_last + bf16 autocast where the CPU supports it). The engine adds Lightning, the resumable
sampler, per-batch seeding, the NaN guard, CSV/TensorBoard logging every 10 steps. Repetitions are
interleaved (bare, engine, bare, engine...) so machine load hits both alike; reported: the median
images/s (source images, before a method multiplies them into rotations, views or patches) and
the engine's overhead.

Usage: python benchmarks/pretrain_speed.py [--arch resnet18] [--size 128] [--batch 16]
       [--steps 20] [--repeats 3] [--methods rotation,simclr,...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import write_results
from retinassl.config import EngineConfig
from retinassl.data.cache import Cache
from retinassl.data.datasets import ImageDataset
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.sources import load_source
from retinassl.engine.fit import fit
from retinassl.hardware import cpu_supports_bf16
from retinassl.methods.base import build_method
from retinassl.models import build_encoder
from retinassl.io.rundir import RunDir

WARMUP = 3
# The image-only pretraining methods (cross-modal pretraining needs paired thickness maps and has
# its own benchmark, oct_speed).
METHODS = ["rotation", "relative_position", "offset_heatmap", "inpainting", "autoencoder", "simclr",
           "supervised"]
# Per-method settings that differ from the defaults (patches sized for the benchmark images).
PARAMS = {"relative_position": {"patch_size": 64}, "offset_heatmap": {"patch_size": 64},
          "inpainting": {"adversarial": 0.001}, "supervised": {"augment": "affine"}}


class Repeated(torch.utils.data.Dataset):
    """``base`` repeated to ``length`` items (item ``i`` is ``base[i % len(base)]``)."""

    def __init__(self, base: torch.utils.data.Dataset, length: int) -> None:
        self.base, self.length = base, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.base[index % len(self.base)]  # type: ignore[index]


def make_dataset(size: int, length: int) -> torch.utils.data.Dataset:
    manifest = load_source("synthetic", n_images=64, size=256, prevalence=0.5, seed=0)
    prepared = Cache().prepare(manifest, PreprocessConfig(size=size), mask_columns=[])
    return Repeated(ImageDataset(prepared, "abnormal"), length)


def make_method(name: str, arch: str):
    torch.manual_seed(0)
    return build_method(name, PARAMS.get(name, {}), build_encoder(arch))


def bare_loop(name: str, arch: str, data, batch: int, steps: int) -> float:
    """A plain loop: DataLoader, channels_last, bf16 autocast, each group's loss/backward/step."""
    method = make_method(name, arch).to(memory_format=torch.channels_last)
    method.train()
    optimizers = method.configure_optimizers()
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if cpu_supports_bf16()
                else contextlib.nullcontext())
    start = None
    for done, b in enumerate(loader):
        if done == WARMUP:
            start = time.perf_counter()
        if done == steps + WARMUP:
            break
        b = {**b, "image": b["image"].contiguous(memory_format=torch.channels_last)}
        generator = torch.Generator().manual_seed(done)
        for group, opt in optimizers.items():
            with autocast:
                loss, _ = method.loss(b, group, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        method.after_step()
    return steps * batch / (time.perf_counter() - start)


def engine_loop(name: str, arch: str, data, batch: int, steps: int) -> float:
    """``engine.fit`` with its defaults; timed from the start of batch WARMUP (its first loss call)
    to the end of the last batch (``after_step``)."""
    method = make_method(name, arch)
    marks: dict[str, float] = {}
    counter = {"batches": 0}
    loss, after = method.loss, method.after_step

    def timed_loss(b, group, generator):
        if counter["batches"] == WARMUP and "start" not in marks:
            marks["start"] = time.perf_counter()
        return loss(b, group, generator)

    def timed_after_step():
        after()
        counter["batches"] += 1
        marks["end"] = time.perf_counter()

    method.loss, method.after_step = timed_loss, timed_after_step  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(Path(tmp), "bench")
        config = EngineConfig(max_epochs=1, max_steps=steps + WARMUP, batch_size=batch,
                              checkpoint_every_n_steps=0, log_every_n_steps=10)
        fit(method, data, config=config, run=run, seed=0)
    return steps * batch / (marks["end"] - marks["start"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("RETINASSL_PROGRESS", "0")
    data = make_dataset(args.size, args.batch * (args.steps + WARMUP + 2))
    results, lines = {}, []
    for name in args.methods.split(","):
        runs: dict[str, list[float]] = {"bare": [], "engine": []}
        for _ in range(args.repeats):
            runs["bare"].append(bare_loop(name, args.arch, data, args.batch, args.steps))
            runs["engine"].append(engine_loop(name, args.arch, data, args.batch, args.steps))
        med = {k: float(np.median(v)) for k, v in runs.items()}
        # each engine run against the bare run just before it (slow drifts in load cancel)
        pair_overhead = float(np.median([1 - e / b for b, e in zip(runs["bare"], runs["engine"])]))
        overhead = 1 - med["engine"] / med["bare"]
        results[name] = {"runs_images_per_s": runs, "median_images_per_s": med,
                         "engine_overhead_of_medians": overhead,
                         "engine_overhead_median_of_pairs": pair_overhead, "params": PARAMS.get(name, {})}
        lines.append(f"| {name} | {med['bare']:.1f} | {med['engine']:.1f} | {100 * overhead:+.1f} % | "
                     f"{100 * pair_overhead:+.1f} % | {'yes' if min(overhead, pair_overhead) <= 0.15 else 'NO'} |")
        print(lines[-1], flush=True)
    table = (f"Encoder {args.arch}, {args.size} px synthetic fundus images, batch {args.batch}; median of "
             f"{args.repeats} interleaved repetitions of {args.steps} timed steps after {WARMUP} warm-up "
             f"steps; channels_last + bf16 autocast (bf16 supported: {cpu_supports_bf16()}) on both sides. "
             f"Images/s counts source images (rotation feeds 4 rotations of each, SimCLR 2 views, the "
             f"patch methods 2 patches).\n\n"
             "Overhead = 1 - toolkit/bare, from the medians and as the median over the interleaved "
             "(bare, toolkit) pairs.\n\n"
             "| method | bare loop img/s | toolkit (engine.fit) img/s | overhead (medians) | "
             "overhead (pairs) | within 15 % |\n"
             "|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    write_results("pretrain_speed", {"arch": args.arch, "size": args.size, "batch": args.batch,
                                     "steps": args.steps, "repeats": args.repeats,
                                     "bf16_supported": cpu_supports_bf16(), "methods": results}, table)
    print(table)


if __name__ == "__main__":
    main()

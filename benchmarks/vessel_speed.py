"""Vessel segmentation speed: training throughput (patches/s) of the toolkit's loop vs the bare model
loop, and sliding-window inference time per DRIVE image.

- toolkit: ``engine.fit`` on DRIVE training images with the ``segmentation`` method exactly as
  ``retinassl segment train`` runs it (Lightning, FOV patch sampling and augmentation inside the
  loss, per-batch RNG reseeding, step checkpoints);
- bare: the same U-Net, loss and optimizer on pre-cut random patches in a tight Python loop
  (no sampling, no augmentation, no Lightning), in the same precision and memory format;
- inference: full-image sliding-window probabilities of DRIVE test images (Gaussian blending).

The two training loops alternate in rounds, so load from other processes on the machine affects
both alike; the ratio is the number to read, the absolute rates depend on the machine's load
(recorded as the load average).

Usage: ``python benchmarks/vessel_speed.py [--root ../shared/data/drive] [--steps 20] [--rounds 3]``;
writes ``benchmarks/results/vessel_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retinassl.config import load_config
from retinassl.data.loading import prepare
from retinassl.engine.fit import fit, resolve_precision
from retinassl.data.vessel_inputs import VesselImageDataset, load_vessel_images
from retinassl.jobs.segment import build_vessel_method
from retinassl.jobs.segment_config import SegmentConfig
from retinassl.jobs.segment_evaluation import labelled_rows, predict_row
from retinassl.io.rundir import RunDir

HERE = Path(__file__).resolve().parent


def toolkit_rate(cfg: SegmentConfig, dataset: VesselImageDataset, steps: int, seed: int,
                 warmup: int = 3) -> float:
    """Patches per second of ``engine.fit`` in its steady state: the time between the end of step
    ``warmup`` and the end of step ``warmup + steps`` (Lightning's start-up is not counted; data
    loading, patch sampling, augmentation, per-batch reseeding and step checkpoints are)."""
    method, _ = build_vessel_method(cfg, len(dataset) // cfg.engine.batch_size)
    ends: list[float] = []
    original = method.after_step

    def timed_after_step() -> None:
        original()
        ends.append(time.perf_counter())

    method.after_step = timed_after_step  # type: ignore[method-assign]
    engine = cfg.engine.model_copy(update={"max_steps": warmup + steps, "max_epochs": 1000})
    with tempfile.TemporaryDirectory() as tmp:
        fit(method, dataset, config=engine, run=RunDir(Path(tmp)), seed=seed)
    patches = steps * cfg.engine.batch_size * method.config.patches_per_image
    return patches / (ends[warmup + steps - 1] - ends[warmup - 1])


def bare_rate(cfg: SegmentConfig, steps: int, precision: str, channels_last: bool, seed: int) -> float:
    """Patches per second of forward + loss + backward + AdamW on pre-cut patches."""
    method, _ = build_vessel_method(cfg, 1)
    model, criterion = method.unet().train(), method.criterion
    optimizer = method.configure_optimizers()["main"]
    n = cfg.engine.batch_size * method.config.patches_per_image
    p = method.config.patch_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.input.num_channels, p, p, generator=g)
    y = (torch.rand(n, 1, p, p, generator=g) < 0.12).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    bf16 = precision == "bf16-mixed"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(HERE.parents[1] / "shared" / "data" / "drive"))
    parser.add_argument("--preset", default="drive-vessels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=5, help="test images timed for inference")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads spin-wait)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(SegmentConfig, args.preset, [f"data.options.root={args.root}", "evaluate_on=[]",  # timing only
                                                   *args.overrides])
    prepared = prepare(cfg.data, cfg.preprocess)
    rows = labelled_rows(prepared, cfg.train.split)
    dataset = VesselImageDataset(load_vessel_images(prepared, rows, cfg.input), cfg.train.samples_per_epoch)
    precision = resolve_precision(cfg.engine.precision, cfg.engine.accelerator)
    loads = [os.getloadavg()[0]]
    toolkit, bare, bare32 = [], [], []
    for r in range(args.rounds):
        toolkit.append(toolkit_rate(cfg, dataset, args.steps, seed=r))
        bare.append(bare_rate(cfg, args.steps, precision, True, seed=r))
        bare32.append(bare_rate(cfg, args.steps, "32-true", False, seed=r))
        loads.append(os.getloadavg()[0])
        print(f"round {r}: toolkit {toolkit[-1]:.1f}, bare {bare[-1]:.1f}, bare fp32 eager "
              f"{bare32[-1]:.1f} patches/s (load {loads[-1]:.1f})", flush=True)

    method, _ = build_vessel_method(cfg, 1)
    model = method.unet().eval()
    test_rows = labelled_rows(prepared, cfg.test_split)[: args.images]
    inference = {}
    for label, update in [("default", {}), ("fp32", {"precision": "32"}),
                          ("roi128-overlap0.5", {"roi_size": 128, "overlap": 0.5, "sw_batch_size": 8})]:
        settings = cfg.inference.model_copy(update=update)
        predict_row(model, prepared, int(test_rows[0]), cfg.input, settings)  # warm-up
        seconds = [predict_row(model, prepared, int(r), cfg.input, settings)[1] for r in test_rows]
        inference[label] = {"settings": settings.model_dump(), "seconds_per_image": float(np.median(seconds)),
                            "seconds": seconds}
        print(f"inference {label}: {np.median(seconds):.2f} s/image", flush=True)

    def med(v: list[float]) -> float:
        return float(np.median(v))

    out = {"preset": args.preset, "overrides": args.overrides, "threads": args.threads,
           "precision": precision, "image_size": cfg.preprocess.size,
           "patch_size": method.config.patch_size,
           "patches_per_step": cfg.engine.batch_size * method.config.patches_per_image,
           "model": {"arch": cfg.model.arch, "kwargs": cfg.model.kwargs,
                     "parameters": sum(p.numel() for p in model.parameters())},
           "steps_per_round": args.steps, "rounds": args.rounds,
           "toolkit_patches_per_s": toolkit, "bare_patches_per_s": bare,
           "bare_fp32_eager_patches_per_s": bare32,
           "toolkit_over_bare": med(toolkit) / med(bare),
           "default_over_fp32_eager": med(bare) / med(bare32),
           "inference": inference, "load_average": loads,
           "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                       "torch": torch.__version__}}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "vessel_speed.json").write_text(json.dumps(out, indent=2))
    md = [f"# Vessel segmentation speed ({args.preset}, {args.threads} threads, {precision})", "",
          f"U-Net `{cfg.model.arch}` {cfg.model.kwargs} ({out['model']['parameters']:,} parameters), "
          f"{out['patches_per_step']} patches of {method.config.patch_size}x{method.config.patch_size} per step; "
          f"median of {args.rounds} alternating rounds of {args.steps} steps; load average during the "
          f"run {min(loads):.1f}-{max(loads):.1f} (other processes share the 2 cores).", "",
          "| training loop | patches/s |", "|---|---|",
          f"| toolkit (`engine.fit`, FOV sampling + augmentation, {precision}, channels_last) | {med(toolkit):.1f} |",
          f"| bare model loop (same precision, channels_last) | {med(bare):.1f} |",
          f"| bare model loop, float32 eager | {med(bare32):.1f} |",
          f"| **toolkit / bare** | **{out['toolkit_over_bare']:.2f}** |",
          f"| default precision / float32 eager (bare) | {out['default_over_fp32_eager']:.2f} |", "",
          f"| sliding-window inference ({cfg.preprocess.size}x{cfg.preprocess.size} cached DRIVE image) | s/image (median of {len(test_rows)}) |",
          "|---|---|"]
    for label, v in inference.items():
        s = v["settings"]
        md.append(f"| {label}: roi {s['roi_size']}, overlap {s['overlap']}, {s['blend']}, precision "
                  f"{s['precision']} | {v['seconds_per_image']:.2f} |")
    (results / "vessel_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Label-fraction curve for vessel segmentation on DRIVE: Dice on the 20 test images after training on
1, 2, 5, 10, 20 images, several seeds, for each initialisation (Scratch and encoder checkpoints).

Each (initialisation, n images, seed) trains one U-Net with the same budget (the same number of
patches whatever n is) and tests it on all 20 DRIVE test images; the image subsets are nested per
seed. Rows go into one results table in the classification protocol's format (experiment, task,
method, init, protocol, fraction, n_labelled, seed, fold, metric, value); a killed run continues
with ``--resume RUN``.

Usage::

    python benchmarks/vessel_curve.py --init scratch --init rotation=runs/pretrain-rotation-.../encoder \\
        [--sizes 1,2,5,10,20] [--seeds 0,1,2] [overrides...]

writes ``benchmarks/results/vessel_curve.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from retinassl.config import load_config
from retinassl.jobs.segment_config import SegmentConfig
from retinassl.sweeps.vessel_curve import run_label_fraction_curve
from retinassl.metrics.stats import mean_ci
from retinassl.report.html import build_report
from retinassl.io.rundir import RunDir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", default=str(SHARED_DATA / "drive"))
    parser.add_argument("--init", action="append", default=None,
                        help="scratch or NAME=PATH of an encoder checkpoint (repeatable)")
    parser.add_argument("--sizes", default="1,2,5,10,20")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads spin-wait)")
    parser.add_argument("--name", default="vessel_curve")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inits = {}
    for item in args.init or ["scratch"]:
        name, _, path = item.rpartition("=")
        inits[name or path] = path
    if args.resume:
        run = RunDir.resume(args.resume)
        cfg = load_config(SegmentConfig, run.config_file)
    else:
        cfg = load_config(SegmentConfig, "drive-vessels", [f"data.options.root={args.drive}",
                                                           f"runs_dir={args.runs_dir}", "evaluate_on=[]",
                                                           *args.overrides])
        run = RunDir.create(cfg.runs_dir, f"{cfg.name}-curve")
    run.attach_log_file()
    print(f"run directory: {run.path}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    table = run_label_fraction_curve(cfg, run, inits, sizes, seeds)
    wall = time.perf_counter() - start
    build_report(run)
    seg = table[table["method"] == "segmentation"]
    cells = []
    for name in inits:
        for n in sizes:
            part = seg[(seg["init"] == name) & (seg["n_labelled"] == n)]
            dice = part[part["metric"] == "dice"].sort_values("seed")
            if dice.empty:
                continue
            values = dice["value"].to_numpy()
            low, high = mean_ci(values)
            auc = part[part["metric"] == "auc"]["value"].to_numpy()
            boot = {int(s): (float(lo), float(hi)) for s, lo, hi in zip(
                dice["seed"], part[part["metric"] == "dice_ci_low"].sort_values("seed")["value"],
                part[part["metric"] == "dice_ci_high"].sort_values("seed")["value"])}
            secs = part[part["metric"] == "train_seconds"]["value"].to_numpy()
            cells.append({"init": name, "n_images": n, "fraction": float(dice["fraction"].iloc[0]), "seeds": dice["seed"].astype(int).tolist(),
                          "dice": values.tolist(), "dice_mean": float(values.mean()),
                          "dice_sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                          "dice_t_ci": [low, high], "dice_bootstrap_ci_per_seed": boot,
                          "auc_mean": float(auc.mean()), "train_seconds_mean": float(secs.mean())})
    observer = table[(table["method"] == "second_observer") & (table["metric"] == "dice")]["value"]
    out = {"command": " ".join([sys.executable, *sys.argv]), "run": str(run.path),
           "inits": inits, "sizes": sizes, "seeds": seeds, "config": cfg.model_dump(mode="json"),
           "wall_seconds": wall, "load_average_end": os.getloadavg(), "cells": cells,
           "second_observer_dice": float(observer.iloc[0]) if len(observer) else None}
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str))
    md = ["# Vessel segmentation label-fraction curve (DRIVE test, 20 images)", "",
          f"U-Net `{cfg.model.arch}` {cfg.model.kwargs}; input {cfg.input.channels}"
          f"{' + CLAHE' if cfg.input.clahe else ''}; method {json.dumps(cfg.method)}; engine "
          f"{cfg.engine.max_epochs} epochs x {cfg.train.samples_per_epoch // cfg.engine.batch_size} steps "
          f"(same patches for every n). Dice pooled over the test pixels inside the FOV; mean over "
          f"seeds [95 % t-interval over seeds]; per-seed bootstrap intervals over test images in the JSON.", "",
          "| init | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name in inits:
        row = [name]
        for n in sizes:
            c = next((c for c in cells if c["init"] == name and c["n_images"] == n), None)
            row.append("-" if c is None else f"{c['dice_mean']:.4f} [{c['dice_t_ci'][0]:.3f}, "
                       f"{c['dice_t_ci'][1]:.3f}] ({len(c['seeds'])} seeds)")
        md.append("| " + " | ".join(row) + " |")
    if out["second_observer_dice"] is not None:
        md += ["", f"Second observer (human reference): Dice {out['second_observer_dice']:.4f}."]
    md += ["", f"Wall time {wall / 60:.1f} min (shared machine). Run: `{run.path}`.", "",
           f"Command: `{out['command']}`"]
    (res / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

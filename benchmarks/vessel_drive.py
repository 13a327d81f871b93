"""Vessel segmentation on DRIVE (20 training images, CPU budget) and cross-dataset on STARE.

Trains the ``drive-vessels`` preset (``retinassl segment train drive-vessels``), evaluates on the 20
DRIVE test images (first observer as the reference, second observer as the human reference) and on
the 16 original-resolution STARE images (the 4 images resized by a redistributor are excluded; FOV
estimated by thresholding since STARE has none). STARE is evaluated at its native scale (the
preset) and, since STARE's pixels are larger relative to the retina than DRIVE's, also resized by
0.77 (FOV diameter ~700 px -> DRIVE's ~540 px) and by 0.6 (pixels per degree: 700 px / 35 deg vs
540 px / 45 deg). Metrics inside the FOV at each dataset's original resolution; Dice/F1 pooled over
the test pixels with a percentile bootstrap interval over images.

Usage: ``python benchmarks/vessel_drive.py [--drive ../shared/data/drive] [--stare ../shared/data/stare]
[overrides...]``; writes ``benchmarks/results/vessel_drive.{json,md}`` and a run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from retinassl.config import DataConfig, load_config
from retinassl.jobs.segment import load_segmenter, run_segment_evaluate, run_segment_train
from retinassl.jobs.segment_config import EvalDatasetConfig, SegmentConfig
from retinassl.report.html import build_report
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA  # noqa: E402
KEYS = ("dice", "sensitivity", "specificity", "accuracy", "auc")
STARE_SCALES = (("native", 1.0), ("fov-diameter 0.77", 0.77), ("pixels-per-degree 0.6", 0.6))


def pick(summary: dict[str, float]) -> dict[str, float]:
    keys = [k for k in summary if k.split("_ci_")[0] in KEYS or k.endswith("image_mean")
            or k in ("seconds_per_image", "n_images")]
    return {k: float(summary[k]) for k in keys}


def fmt(s: dict[str, float], key: str) -> str:
    if key not in s:
        return "-"
    low, high = s.get(f"{key}_ci_low"), s.get(f"{key}_ci_high")
    return f"{s[key]:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", default=str(SHARED_DATA / "drive"))
    parser.add_argument("--stare", default=str(SHARED_DATA / "stare"))
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads spin-wait)")
    parser.add_argument("--name", default="vessel_drive")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"data.options.root={args.drive}", f"runs_dir={args.runs_dir}", "evaluate_on=[]",
                 *args.overrides]
    cfg = load_config(SegmentConfig, "drive-vessels", overrides)
    run = RunDir.create(cfg.runs_dir, cfg.name)
    run.attach_log_file()
    print(f"run directory: {run.path}", flush=True)
    start = time.perf_counter()
    metrics = run_segment_train(cfg, run)
    wall = time.perf_counter() - start
    segmenter = load_segmenter(run.path)
    stare = {}
    for label, scale in STARE_SCALES:
        preprocess = segmenter.preprocess.model_copy(update={
            "size": round(700 * scale), "crop_fov": False, "fov_threshold": 0.25})
        spec = EvalDatasetConfig(name=f"stare-{label.split()[0]}",
                                 data=DataConfig(source="stare", options={"root": args.stare},
                                                 cache_dir=cfg.data.cache_dir),
                                 preprocess=preprocess, exclude_flag="resized")
        result = run_segment_evaluate(segmenter, spec, run, n_figures=2 if scale == 1.0 else 0,
                                      save_predictions=scale == 1.0)
        stare[label] = {"scale": scale, "size": preprocess.size, **pick(result.summary)}
        print(f"STARE {label}: dice {result.summary['dice']:.4f}", flush=True)
    build_report(run)
    results = read_results(run.results_file)
    source = str(cfg.data.source)
    drive_rows = results[(results["task"] == f"vessels:{source}") & (results["method"] == "segmentation")]
    drive = {m: float(v) for m, v in zip(drive_rows["metric"], drive_rows["value"])}
    n_train = int(drive_rows["n_labelled"].iloc[0])
    observer_rows = results[results["method"] == "second_observer"]
    observer = {m: float(v) for m, v in zip(observer_rows["metric"], observer_rows["value"])}
    out = {"command": " ".join([sys.executable, *sys.argv]), "run": str(run.path),
           "config": cfg.model_dump(mode="json"), "threads": args.threads,
           "load_average_end": os.getloadavg(), "wall_seconds": wall,
           "train_seconds": metrics["train_seconds"], "train_steps": metrics["train_steps"],
           "n_train_images": n_train,
           "drive_test": pick(drive), "second_observer": observer, "stare": stare,
           "target_dice": 0.80, "meets_target": drive["dice"] >= 0.80}
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str))
    method = cfg.method
    patches = int(metrics["train_steps"]) * cfg.engine.batch_size * int(method.get("patches_per_image", 8))
    md = [f"# Vessel segmentation: DRIVE ({n_train} training images) and STARE cross-dataset", "",
          f"Model: U-Net, `{cfg.model.arch}` encoder {cfg.model.kwargs}, init `{cfg.model.init}`; input "
          f"{cfg.input.channels}{' + CLAHE' if cfg.input.clahe else ''}; loss `{method.get('loss', 'dice_ce')}`; "
          f"{int(metrics['train_steps'])} steps x {cfg.engine.batch_size * int(method.get('patches_per_image', 8))} "
          f"patches of {method.get('patch_size', 64)} px = {patches:,} patches; training "
          f"{metrics['train_seconds'] / 60:.1f} min on {args.threads} threads (shared machine; load average at "
          f"the end {os.getloadavg()[0]:.1f}). Sliding-window inference roi {cfg.inference.roi_size}, overlap "
          f"{cfg.inference.overlap}, Gaussian blending, threshold {cfg.inference.threshold}.", "",
          "Metrics inside the FOV at the original resolution; Dice/F1, sensitivity, specificity and "
          "accuracy pooled over all test pixels, [95 % bootstrap interval over images]; AUC pooled.", "",
          "| test set | Dice (F1) | sensitivity | specificity | accuracy | AUC | Dice, mean of images | s/image |",
          "|---|---|---|---|---|---|---|---|",
          f"| DRIVE test ({int(drive['n_images'])}), model | {fmt(drive, 'dice')} | {fmt(drive, 'sensitivity')} | "
          f"{fmt(drive, 'specificity')} | {fmt(drive, 'accuracy')} | {drive['auc']:.4f} | "
          f"{drive['dice_image_mean']:.4f} | {drive['seconds_per_image']:.2f} |",
          f"| DRIVE test ({int(observer.get('n_images', 0))}), second observer | {fmt(observer, 'dice')} | {fmt(observer, 'sensitivity')} | "
          f"{fmt(observer, 'specificity')} | {fmt(observer, 'accuracy')} | - | - | - |"]
    for label, s in stare.items():
        md.append(f"| STARE ({int(s['n_images'])}, {label}: {s['size']} px) | {fmt(s, 'dice')} | "
                  f"{fmt(s, 'sensitivity')} | {fmt(s, 'specificity')} | {fmt(s, 'accuracy')} | "
                  f"{s['auc']:.4f} | {s['dice_image_mean']:.4f} | {s['seconds_per_image']:.2f} |")
    md += ["", f"Target DRIVE Dice >= 0.80: **{'met' if out['meets_target'] else 'not met'}** "
               f"({drive['dice']:.4f}). Run: `{run.path}`.", "",
           f"Command: `{out['command']}`"]
    (res / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Every pretraining method on real fundus images, through the full pipeline (``run_pretrain``):
does the loss go down, and does the encoder checkpoint load back?

Pool for the self-supervised methods: IDRiD part A (81) + DRIVE (40) + STARE (20) images, labels
ignored, combined from three sources. The supervised normal/abnormal method ("Fundus") uses the
IDRiD part-B training images with ``abnormal`` (= DR grade > 0). ResNet18, 128 px, batch 16, a few
hundred steps each. Writes ``benchmarks/results/pretrain_real.{json,md,png}`` (start/end loss =
mean of the first/last tenth of the logged steps) and keeps the run directories under
``runs/pretrain-real/``.

Usage: python benchmarks/pretrain_real.py [--steps 300] [--size 128] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, ROOT, SHARED_DATA, write_results
from retinassl.models.checkpoint import load_encoder
from retinassl.config import validate
from retinassl.jobs.pretrain import PretrainConfig, run_pretrain
from retinassl.report.curves import curves_summary, read_history, running_mean
from retinassl.figures.plots import plt, save_figure
from retinassl.io.rundir import RunDir

METHODS = ["rotation", "relative_position", "offset_heatmap", "inpainting", "autoencoder", "simclr",
           "supervised"]
PARAMS = {"relative_position": {"patch_size": 32}, "offset_heatmap": {"patch_size": 32},
          "inpainting": {"adversarial": 0.001}, "supervised": {"augment": "affine"}}
SSL_POOL = [{"source": "idrid", "options": {"root": str(SHARED_DATA / "idrid"), "parts": ["A"]}},
            {"source": "drive", "options": {"root": str(SHARED_DATA / "drive")}},
            {"source": "stare", "options": {"root": str(SHARED_DATA / "stare")}}]
FUNDUS_POOL = [{"source": "idrid", "options": {"root": str(SHARED_DATA / "idrid"), "parts": ["B"]}}]


def config_for(method: str, steps: int, size: int, batch: int, arch: str = "resnet18",
               kwargs: dict | None = None) -> PretrainConfig:
    supervised = method == "supervised"
    tag = "" if arch == "resnet18" else f"-{arch}"
    data = {"name": f"real-{method}{tag}", "seed": 0, "runs_dir": str(ROOT / "runs" / "pretrain-real"),
            "data": FUNDUS_POOL if supervised else SSL_POOL,
            "splits": ["train"] if supervised else None, "label": "abnormal" if supervised else None,
            "preprocess": {"size": size, "normalize": "max"},
            "model": {"arch": arch, "kwargs": kwargs or {}},
            "method": {"name": method, "lr": 1e-3, **PARAMS.get(method, {})},
            "engine": {"max_epochs": 1000, "max_steps": steps, "batch_size": batch,
                       "log_every_n_steps": 5, "checkpoint_every_n_steps": 100}}
    return validate(PretrainConfig, data, origin=f"real {method}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--arch", default="resnet18", help="encoder (e.g. unet for the vessel U-Net's)")
    parser.add_argument("--kwargs", type=json.loads, default={}, help='encoder kwargs as JSON, e.g. \'{"channels": [16, 32, 64, 128]}\'')
    parser.add_argument("--name", default="pretrain_real", help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("RETINASSL_PROGRESS", "0")
    results, histories, lines = {}, {}, []
    for method in args.methods.split(","):
        config = config_for(method, args.steps, args.size, args.batch, args.arch, args.kwargs)
        run = RunDir.create(config.runs_dir, config.name)
        start = time.perf_counter()
        encoder_dir = run_pretrain(config, run)
        seconds = time.perf_counter() - start
        run.update_status(status="finished", encoder=str(encoder_dir))
        encoder, meta = load_encoder(encoder_dir)
        encoder.eval()
        with torch.no_grad():
            finite = bool(torch.isfinite(encoder(torch.rand(2, 3, args.size, args.size))).all())
        history = read_history(run.path / "logs" / "csv" / "metrics.csv")
        histories[method] = history
        summary = {r["metric"]: r for r in curves_summary(history).to_dict("records")}
        loss = summary["main_loss"]
        extra = {k: v for k, v in summary.items() if k != "main_loss"}
        results[method] = {"run": str(run.path), "pool_size": meta["pool_size"], "steps": meta["batches"],
                           "seconds": seconds, "loss_start": loss["start"], "loss_end": loss["end"],
                           "other_curves": extra, "checkpoint_loads": True, "finite_outputs": finite,
                           "params": PARAMS.get(method, {})}
        others = "; ".join(f"{k} {v['start']:.3f} -> {v['end']:.3f}" for k, v in extra.items())
        lines.append(f"| {method} | {meta['pool_size']} | {meta['batches']} | {loss['start']:.4f} | "
                     f"{loss['end']:.4f} | {100 * (loss['end'] / loss['start'] - 1):+.0f} % | {others} | "
                     f"{seconds / 60:.1f} |")
        print(lines[-1], flush=True)
    figure = curves_png(histories, RESULTS / f"{args.name}.png")
    table = (f"{args.arch} {args.kwargs or ''} from scratch, {args.size} px, batch {args.batch}, {args.steps} steps, AdamW lr 1e-3 "
             "with 5 % warm-up and cosine decay, bf16 autocast. Self-supervised pool: IDRiD part A + DRIVE + "
             "STARE (labels ignored); supervised: IDRiD part-B train, abnormal = DR grade > 0. Start/end: "
             "mean of the first/last tenth of the logged steps (every 5th step). Every encoder checkpoint "
             f"loaded back. Curves: `{figure.name}` (written next to this file; figures are not committed).\n\n"
             "| method | images | steps | loss start | loss end | change | other curves (start -> end) | "
             "minutes |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    write_results(args.name, {"arch": args.arch, "kwargs": args.kwargs, "steps": args.steps, "size": args.size,
                              "batch": args.batch, "methods": results}, table)
    print(table)


def curves_png(histories: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(histories), figsize=(2.8 * len(histories), 2.6), squeeze=False)
    for ax, (method, history) in zip(axes[0], histories.items()):
        data = history[["step", "train/main_loss"]].dropna()
        values = data["train/main_loss"].to_numpy(dtype=float)
        ax.plot(data["step"], values, lw=0.6, alpha=0.4, color="tab:blue")
        ax.plot(data["step"], running_mean(values, max(1, len(values) // 10)), lw=1.8, color="tab:blue")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

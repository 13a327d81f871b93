"""OCT layer segmentation and thickness maps on synthetic volumes with exact ground truth.

DeepRT's first two stages: a U-Net trained on 1,009 annotated B-scans (DeepRT's count) from synthetic
Spectralis-like volumes (49 x 496 x 512, 10 layer boundaries), then evaluated on held-out volumes of
other eyes:

- region Dice per layer (between consecutive boundaries) and for the whole retina (ILM-BM), in each
  B-scan's own 496 x 512 grid;
- mean absolute boundary error in micrometres, per boundary;
- thickness (ILM-BM) per A-scan and on the 128 x 128 map against the generator's exact thickness,
  and the ETDRS sector means against those of the exact boundaries.

The trained model lands in ``runs/bench-oct/layers-*/layer-model`` (read by ``oct_transfer.py``).
Run it in the background through the heavy-job lock::

    nohup flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/oct_layers.py \
        > /tmp/oct_layers.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_results  # noqa: E402

from retinassl.config import validate  # noqa: E402
from retinassl.data.synthetic_oct import BOUNDARY_NAMES, DEFAULT_SHAPE  # noqa: E402
from retinassl.oct.layers import boundaries_to_labels  # noqa: E402
from retinassl.jobs.oct_thickness import compute_thickness  # noqa: E402
from retinassl.oct.synthetic import synthetic_volumes  # noqa: E402
from retinassl.oct.thickness import ascan_thickness  # noqa: E402
from retinassl.jobs.oct_layers import LayerTrainConfig, evaluate_layers, run_train_layers  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402


def retina_dice(model, volumes) -> float:
    """Dice of the whole retina (ILM to BM) in the B-scans' own grid."""
    inter = total = 0
    for volume in volumes:
        pred = model.segment(volume)
        depth = volume.shape[1]
        for i in range(volume.shape[0]):
            t = np.stack([volume.layers["ILM"][i], volume.layers["BM"][i]])
            p = np.stack([pred["ILM"][i], pred["BM"][i]])
            lt, lp = boundaries_to_labels(t, depth) == 1, boundaries_to_labels(p, depth) == 1
            inter += int((lt & lp).sum())
            total += int(lt.sum() + lp.sum())
    return 2 * inter / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-volumes", type=int, default=24, help="volumes for training + validation")
    parser.add_argument("--test-volumes", type=int, default=6)
    parser.add_argument("--max-bscans", type=int, default=1009)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--boundaries", choices=["all", "retina"], default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-oct")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    boundaries = list(BOUNDARY_NAMES) if args.boundaries == "all" else ["ILM", "BM"]
    t0 = time.perf_counter()
    train = synthetic_volumes(args.train_volumes, 101, DEFAULT_SHAPE)
    test = synthetic_volumes(args.test_volumes, 202, DEFAULT_SHAPE, with_truth=True)
    render_s = time.perf_counter() - t0
    cfg = validate(LayerTrainConfig, {
        "name": "layers", "runs_dir": str(args.runs_dir), "input_size": list(args.size),
        "max_bscans": args.max_bscans, "val_fraction": 0.15,
        "model": {"arch": "unet", "kwargs": {"in_channels": 1, "channels": [16, 32, 64, 128]}},
        "method": {"name": "oct-layers", "boundaries": boundaries, "lr": 3e-3},
        "engine": {"max_epochs": args.epochs, "batch_size": 16, "checkpoint_every_n_steps": 100,
                   "num_threads": args.threads}})
    run = RunDir.create(cfg.runs_dir, cfg.name)
    model, val_metrics = run_train_layers(cfg, run, train)
    t1 = time.perf_counter()
    test_volumes = [v for v, _ in test]
    metrics = evaluate_layers(model, test_volumes)
    metrics["dice_retina_ILM-BM"] = retina_dice(model, test_volumes)
    ascan_err, map_err, etdrs_err, undefined = [], [], [], []
    for volume, truth in test:
        result = compute_thickness(volume, model)
        exact = ascan_thickness(volume.layers["ILM"], volume.layers["BM"], volume.spacing_mm[1])
        both = np.isfinite(result.thickness) & np.isfinite(exact)
        ascan_err.append(np.abs(result.thickness[both] - exact[both]))
        undefined.append(float((~np.isfinite(result.thickness)).mean()))
        m, ref = result.tmap, truth.thickness_map
        ok = np.isfinite(m) & (ref > 0)
        map_err.append(np.abs(m[ok] - ref[ok]))
        reference = compute_thickness(volume, None)                 # exact boundaries, same fovea
        if result.etdrs is not None and reference.etdrs is not None:
            etdrs_err.append(np.abs(result.etdrs["mean_um"].to_numpy()
                                    - reference.etdrs["mean_um"].to_numpy()))
    eval_s = time.perf_counter() - t1
    def stat(parts: list, fn) -> float:
        values = np.concatenate(parts) if parts else np.zeros(0)
        return float(fn(values)) if len(values) else float("nan")

    p95 = lambda v: np.percentile(v, 95)  # noqa: E731
    thickness = {
        "ascan_thickness_mae_um": stat(ascan_err, np.mean),
        "ascan_thickness_p95_um": stat(ascan_err, p95),
        "map_mae_um": stat(map_err, np.mean),
        "map_p95_um": stat(map_err, p95),
        "etdrs_sector_mae_um": stat(etdrs_err, np.nanmean),
        "etdrs_sector_max_um": stat(etdrs_err, np.nanmax),
        "undefined_ascans": float(np.mean(undefined)),
        "mean_true_thickness_um": float(np.mean([np.nanmean(t.thickness) for _, t in test])),
    }
    data = {"config": json.loads(cfg.model_dump_json()), "model_dir": str(run.path / "layer-model"),
            "train_volumes": args.train_volumes, "test_volumes": args.test_volumes,
            "shape": list(DEFAULT_SHAPE), "validation": val_metrics, "test": metrics,
            "thickness": thickness, "seconds": {"render": render_s, "train": val_metrics["train_seconds"],
                                                "evaluate": eval_s}}
    rows = ["| quantity | value |", "|---|---|"]
    rows += [f"| Dice, retina (ILM-BM) | {metrics['dice_retina_ILM-BM']:.4f} |",
             f"| Dice, mean of the {len(boundaries) - 1} layers | {metrics['dice_layers']:.4f} |"]
    rows += [f"| Dice {k.removeprefix('dice_')} | {v:.4f} |" for k, v in metrics.items()
             if k.startswith("dice_") and k not in ("dice_layers", "dice_retina_ILM-BM")]
    rows += [f"| boundary error {k.removeprefix('boundary_error_um_')} (µm) | {v:.2f} |"
             for k, v in metrics.items() if k.startswith("boundary_error_um_")]
    rows += [f"| mean boundary error (µm) | {metrics['boundary_error_um']:.2f} |"]
    rows += [f"| {k} | {v:.3f} |" for k, v in thickness.items()]
    table = "\n".join(rows)
    axial_um = test_volumes[0].spacing_mm[1] * 1000
    note = (f"\n\nSynthetic volumes {DEFAULT_SHAPE} (axial {axial_um:.2f} µm/row); "
            f"{int(val_metrics['train_bscans'])} training B-scans from {args.train_volumes} volumes "
            f"(15 % of the volumes held out for validation), {args.test_volumes} test volumes of other "
            f"eyes; network input {args.size[0]}x{args.size[1]}; {args.epochs} epochs. Truth = the "
            f"generator's exact boundaries and maps. Not validated on real OCT (none with annotations "
            f"is available here).")
    write_results("oct_layers", data, table + note)
    print(table)


if __name__ == "__main__":
    main()

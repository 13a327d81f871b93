"""DeepRT's scheme end to end on synthetic data: OCT layer segmentation -> thickness maps ->
fundus-to-thickness pretraining -> transfer to diabetic-retinopathy classification with few labels.

Stage ``pretrain``: a pool of synthetic eyes with Spectralis-like OCT volumes (49 x 496 x 512); their
thickness maps are computed by the layer-segmentation model of ``oct_layers.py`` (no ground truth is
used for the targets); a ResNet-18 encoder + U-Net decoder learns colour fundus (128 px) -> map. The
regression error is measured on the pool's test eyes against the segmented maps it learnt from and
against the generator's exact maps, next to the error of predicting the mean training map.
Writes ``results/oct_crossmodal.{json,md}``.

Stage ``transfer``: the transfer-evaluation sweep (:mod:`retinassl.sweeps.transfer`) on a separate
synthetic DR dataset (other eyes): referable DR (grade >= 2) and macular oedema (DME grade 2:
exudates within one disc diameter of the fovea, the eyes with the large oedema; every DR eye's OCT
is also thickened around its red lesions, see docs/OCT.md); 1, 2, 5 and 10 % of the training
labels and, for the ceiling, all of them; Scratch vs the cross-modal encoder, linear probe (5 seeds) and fine-tuning (3 seeds), DeLong
tests against Scratch on the same test images. Writes ``results/oct_transfer.{json,md}``.

    nohup flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/oct_transfer.py \
        > /tmp/oct_transfer.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, write_results  # noqa: E402

from retinassl.config import validate  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402

RUNS = ROOT / "runs" / "bench-oct"


def stage_pretrain(args: argparse.Namespace) -> dict:
    from retinassl.jobs.cross_modal import CrossModalRunConfig, run_cross_modal

    layer_model = args.layer_model or Path(json.loads((RESULTS / "oct_layers.json").read_text())["model_dir"])
    cfg = validate(CrossModalRunConfig, {
        "name": "crossmodal", "runs_dir": str(RUNS), "input": "image", "maps": "segment",
        "layer_model": str(layer_model),
        "data": {"source": "synthetic", "workers": 1, "options": {
            "n_images": args.pool, "size": 256, "prevalence": 0.5, "seed": 11, "with_oct": True, "workers": 2,
            "oct_shape": [49, 496, 512]}},
        "preprocess": {"size": 128}, "model": {"arch": "resnet18"},
        "method": {"name": "cross-modal", "lr": 1e-3},
        "engine": {"max_epochs": args.pretrain_epochs, "batch_size": args.batch_size, "checkpoint_every_n_steps": -1,
                   "num_threads": args.threads}, "predictions": 6})
    run = RunDir.create(cfg.runs_dir, cfg.name)
    run.attach_log_file()
    start = time.perf_counter()
    metrics = run_cross_modal(cfg, run)
    data = {"encoder_dir": str(run.encoder_dir), "run": str(run.path), "layer_model": str(layer_model),
            "pool_images": args.pool, "metrics": metrics, "seconds": time.perf_counter() - start,
            "config": json.loads(cfg.model_dump_json())}
    m = metrics
    table = "\n".join([
        "| fundus -> thickness, test eyes of the pool | MAE (µm) | RMSE (µm) |", "|---|---|---|",
        f"| cross-modal network vs the segmented maps it learnt from | {m['mae_um']:.2f} | {m['rmse_um']:.2f} |",
        f"| cross-modal network vs the exact maps | {m.get('mae_um_vs_manifest', float('nan')):.2f} | "
        f"{m.get('rmse_um_vs_manifest', float('nan')):.2f} |",
        f"| mean training map (baseline) vs the segmented maps | {m['baseline_mae_um']:.2f} | |",
        f"| segmented maps (targets) vs the exact maps | {m.get('target_mae_um_vs_manifest', float('nan')):.2f} | |",
        f"| cross-modal network vs the segmented maps, deviant pixels "
        f"({int(m.get('pixels_deviant', 0))}) | {m.get('mae_um_deviant', float('nan')):.2f} | "
        f"{m.get('rmse_um_deviant', float('nan')):.2f} |",
        f"| mean training map vs the segmented maps, deviant pixels | "
        f"{m.get('baseline_mae_um_deviant', float('nan')):.2f} | |",
    ])
    note = (f"\n\n{args.pool} synthetic eyes (256 px fundus, 49 x 496 x 512 OCT) split 60/20/20 by "
            f"patient; targets = thickness maps from the oct_layers model (no ground truth used), "
            f"registered to the fundus photograph through the B-scan positions; ResNet-18 + U-Net "
            f"decoder, 128 px input, {args.pretrain_epochs} epochs of batch {args.batch_size}; errors over defined map pixels "
            f"(the scanned macula); deviant pixels: where the target departs from the mean training map by "
            f"more than {cfg.deviant_um:g} µm. {int(m.get('maps_failing_quality', 0))} maps failed the quality "
            f"check (masked).")
    write_results("oct_crossmodal", data, table + note)
    return data


def stage_transfer(args: argparse.Namespace, encoder_dir: Path) -> dict:
    from retinassl.sweeps.transfer import run_transfer
    from retinassl.sweeps.transfer_config import TransferConfig

    cfg = validate(TransferConfig, {
        "name": "oct-transfer", "seed": 0, "runs_dir": str(RUNS),
        "data": {"source": "synthetic", "options": {"n_images": args.dr_images, "size": 256,
                                                    "prevalence": 0.5, "seed": 21}},
        "detect_duplicates": False, "preprocess": {"size": 128}, "model": {"arch": "resnet18"},
        "inits": [{"name": "scratch"}, {"name": "cross-modal", "init": str(encoder_dir)}],
        "reference": "scratch",
        "tasks": [{"name": "referable", "kind": "binary", "label": "dr_grade", "positive_from": 2,
                   "stratify": "dr_grade"},
                  {"name": "dme", "kind": "binary", "label": "dme", "positive_from": 2}],
        "fractions": [0.01, 0.02, 0.05, 0.1, 1.0], "seeds": [0, 1, 2, 3, 4], "finetune_seeds": [0, 1, 2],
        "protocols": ["probe", "finetune"],
        "finetune": {"lr": 1e-3, "epochs": 10, "min_steps": 20, "max_steps": 60, "val_every_steps": 5,
                     "patience": 3},
        "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "num_threads": args.threads},
        "explain": {"tsne": False, "gradcam": 0}})
    run = RunDir.create(cfg.runs_dir, cfg.name)
    run.attach_log_file()
    start = time.perf_counter()
    run_transfer(cfg, run)
    table = pd.read_csv(run.path / "comparison.csv")
    markdown = (run.path / "comparison.md").read_text()
    data = {"run": str(run.path), "encoder_dir": str(encoder_dir), "dr_images": args.dr_images,
            "seconds": time.perf_counter() - start, "comparison": table.to_dict("records"),
            "config": json.loads(cfg.model_dump_json())}
    note = (f"\n\nSynthetic DR dataset of {args.dr_images} eyes (other eyes than the pretraining pool), "
            f"referable DR = grade >= 2, dme = DME grade 2 (the eyes with the large oedema), 128 px. Scratch = random ResNet-18; cross-modal = the "
            f"fundus -> OCT-thickness encoder {encoder_dir}"
            f"{' (of oct_crossmodal)' if args.encoder is None else ''}. Fractions of the training labels; "
            f"probe: 5 seeds, fine-tuning: 3 seeds; DeLong p on seed-ensemble scores vs Scratch. "
            f"Synthetic data only: no real OCT/fundus pairs or real DR images were used.")
    write_results("oct_transfer", data, markdown + note)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["pretrain", "transfer", "all"], default="all")
    parser.add_argument("--layer-model", type=Path, default=None)
    parser.add_argument("--encoder", type=Path, default=None, help="skip pretraining: this encoder")
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--pretrain-batch-size", dest="batch_size", type=int, default=32)
    parser.add_argument("--dr-images", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    encoder = args.encoder
    if args.stage in ("pretrain", "all") and encoder is None:
        encoder = Path(stage_pretrain(args)["encoder_dir"])
    if args.stage in ("transfer", "all"):
        if encoder is None:
            encoder = Path(json.loads((RESULTS / "oct_crossmodal.json").read_text())["encoder_dir"])
        stage_transfer(args, encoder)


if __name__ == "__main__":
    main()

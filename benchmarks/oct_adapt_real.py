"""The synthetic-trained OCT layer model adapted to the real MX B-scans with graph-search pseudo-labels.

1. **Base model**: ``--model`` (a saved ``layer-model`` whose first boundary is ILM and last BM), or
   one trained here on synthetic volumes by ``oct_layers.py``'s recipe (all ten boundaries, 128 x 128
   input; ``--base-bscans`` B-scans for ``--base-epochs`` epochs: a smaller budget than
   ``oct_layers.py``'s 1,009 x 8).
2. **Adaptation** (:mod:`retinassl.jobs.oct_adapt`, the job of ``retinassl oct adapt-layers``): the
   graph search (Chiu et al. 2010) on the 675 B-scans, spacing unknown (as a user without metadata
   runs it: the nominal spacing scales its constraints); the B-scans it flags clean are pseudo-labels
   (ILM and BM only; the model's eight inner boundaries are not trained: the inner regions are merged
   in the loss); patient groups split 75/25 (seeded); ``--steps`` fine-tuning steps; one variant per
   ``--replay`` count of labelled synthetic B-scans mixed into the fine-tuning (0 = none).
3. **Measured before and after**: agreement with the graph search on the held-out patients' clean
   B-scans (mean absolute ILM and BM difference, pixels of the 287-row B-scan) and the error on the
   exact truth of the six held-out synthetic volumes of ``oct_layers.py`` (seed 202; ILM, BM and all
   ten boundaries, micrometres).

No file name or patient number is written (the job registers them as private; only counts). Run it
through the heavy-job lock (about 10 minutes on two cores)::

    nohup flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/oct_adapt_real.py \\
        > /tmp/oct_adapt_real.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, write_results  # noqa: E402
from oct_real_bscans import FIGURE_LINK  # noqa: E402

from retinassl.config import validate  # noqa: E402
from retinassl.data.synthetic_oct import BOUNDARY_NAMES, DEFAULT_SHAPE  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.jobs.oct_adapt import PSEUDO_LABELS, AdaptLayersConfig, run_adapt_layers  # noqa: E402
from retinassl.jobs.oct_layers import LayerTrainConfig, run_train_layers  # noqa: E402
from retinassl.oct.synthetic import synthetic_volumes  # noqa: E402


def base_model(args: argparse.Namespace) -> tuple[Path, dict]:
    """The model to adapt: ``--model``, or one trained here on synthetic volumes."""
    if args.model is not None:
        from retinassl.io.saved_model import read_model

        meta = read_model(args.model).meta
        return args.model, {"given": str(args.model), "boundaries": meta.get("boundaries"),
                            "train_bscans": meta.get("train_bscans"), "train_volumes": meta.get("train_volumes")}
    train = synthetic_volumes(args.base_volumes, 101, DEFAULT_SHAPE)
    cfg = validate(LayerTrainConfig, {
        "name": "layers-base", "runs_dir": str(args.runs_dir), "input_size": [128, 128],
        "max_bscans": args.base_bscans, "val_fraction": 0.15,
        "model": {"arch": "unet", "kwargs": {"in_channels": 1, "channels": [16, 32, 64, 128]}},
        "method": {"name": "oct-layers", "boundaries": list(BOUNDARY_NAMES), "lr": 3e-3},
        "engine": {"max_epochs": args.base_epochs, "batch_size": 16, "checkpoint_every_n_steps": 100,
                   "num_threads": args.threads}})
    run = RunDir.create(cfg.runs_dir, cfg.name)
    _, val = run_train_layers(cfg, run, train)
    return run.path / "layer-model", {"trained_here": str(run.path / "layer-model"),
                                      "train_volumes": args.base_volumes, "max_bscans": args.base_bscans,
                                      "epochs": args.base_epochs, "validation": val}


def table(variants: dict[int, dict], base: dict, args: argparse.Namespace) -> str:
    """One column for the synthetic-trained model and one per adapted variant (by replay count)."""
    first = next(iter(variants.values()))
    b, c = first["before"], first["counts"]
    names = [f"adapted, replay {n}" if n else "adapted" for n in variants]
    rows = ["| measure | synthetic-trained | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names)]
    for part, key, label, fmt in (
            ("real", "mad_ilm_px", "real held-out: ILM vs graph search (px)", ".2f"),
            ("real", "mad_bm_px", "real held-out: BM vs graph search (px)", ".2f"),
            ("real", "mad_px", "real held-out: mean of ILM and BM vs graph search (px)", ".2f"),
            ("real", "model_undefined_fraction", "real held-out: A-scans the model leaves undefined", ".2%"),
            ("synthetic", "error_um_ilm", "synthetic truth: ILM error (µm)", ".2f"),
            ("synthetic", "error_um_bm", "synthetic truth: BM error (µm)", ".2f"),
            ("synthetic", "error_um_all", "synthetic truth: mean error of all 10 boundaries (µm)", ".2f"),
            ("synthetic", "dice_layers", "synthetic truth: mean layer Dice", ".4f"),
            ("synthetic", "undefined_fraction", "synthetic truth: A-scans left undefined", ".2%")):
        cells = [f"{v['after'][part][key]:{fmt}}" for v in variants.values()]
        rows.append(f"| {label} | {b[part][key]:{fmt}} | " + " | ".join(cells) + " |")
    flags = ", ".join(f"{k} {v}" for k, v in c["flag_counts"].items()) or "none"
    origin = (f"given ({base['given']}: {base['train_bscans']} training B-scans of {base['train_volumes']} "
              f"synthetic volumes)" if "given" in base else
              f"trained here on {base['max_bscans']} B-scans of {base['train_volumes']} synthetic volumes, "
              f"{base['epochs']} epochs (validation boundary error "
              f"{base['validation']['boundary_error_um']:.2f} µm)")
    note = (f"\n\nBase model: {origin}. Real data: {c['bscans']} MX B-scans (704 x 287 JPEG, no stated "
            f"spacing), {c['groups']} patient groups; graph search clean on {c['clean']} "
            f"({c['clean'] / c['bscans']:.1%}; flags raised: {flags}). Split by patient group (seed "
            f"{args.seed}): {c['train_bscans']} training B-scans ({c['train_pseudo_labels']} clean = "
            f"pseudo-labels), {c['held_out_bscans']} held out ({c['held_out_clean']} clean = the "
            f"agreement set). Fine-tuning: {args.steps} steps of batch {args.batch_size}, AdamW lr "
            f"{args.lr} (warm-up + cosine); on the real B-scans ILM and BM only (the 8 inner "
            f"boundaries are not trained there: inner regions merged in the loss); \"replay N\": N "
            f"labelled synthetic B-scans (all 10 boundaries, 4 volumes of seed 101, not the test "
            f"volumes) mixed into the fine-tuning set. Synthetic truth: the {args.test_volumes} held-out "
            f"volumes of oct_layers.py (seed 202, {DEFAULT_SHAPE[0]} x {DEFAULT_SHAPE[1]} x "
            f"{DEFAULT_SHAPE[2]}). Agreement is with the graph search, not with a human grader: a "
            f"lower number means closer to the graph search's boundaries (which on synthetic truth "
            f"are within 4.9 µm (ILM) and 2.6 µm (BM), oct_real_boundaries.md), not necessarily "
            f"closer to the anatomy.\n\n{FIGURE_LINK}")
    return "\n".join(rows) + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a saved layer model (default: train one)")
    parser.add_argument("--base-volumes", type=int, default=24)
    parser.add_argument("--base-bscans", type=int, default=600)
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "mx_fundus_oct")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--replay", type=int, nargs="+", default=[0, 200],
                        help="labelled synthetic B-scans mixed into the fine-tuning, one variant each")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--test-volumes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-bscans", type=int, default=None,
                        help="a quick check on this many real B-scans (prints, writes no results)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-oct-adapt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # the source's table warnings name files (patient numbers) before the job can register them
    logging.getLogger("retinassl.data.sources.mx_fundus_oct").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, base = base_model(args)
    base_s = time.perf_counter() - t0
    from retinassl.data.sources import load_source

    manifest = load_source("mx_fundus_oct", root=args.data, modality="oct")
    test = synthetic_volumes(args.test_volumes, 202, DEFAULT_SHAPE)
    variants: dict[int, dict] = {}
    cache: Path | None = None
    t1 = time.perf_counter()
    for replay in args.replay:
        cfg = validate(AdaptLayersConfig, {
            "name": f"adapt-mx-replay{replay}", "seed": args.seed, "runs_dir": str(args.runs_dir),
            "model": str(model), "replay_bscans": replay,
            "data": {"source": "mx_fundus_oct", "options": {"root": str(args.data), "modality": "oct"}},
            "val_fraction": 0.25, "lr": args.lr, "max_bscans": args.max_bscans,
            "engine": {"max_epochs": 1000, "max_steps": args.steps, "batch_size": args.batch_size,
                       "checkpoint_every_n_steps": 50, "num_threads": args.threads}})
        run = RunDir.create(cfg.runs_dir, cfg.name)
        if cache is not None:                    # the same B-scans: the graph search is not redone
            shutil.copyfile(cache, run.path / PSEUDO_LABELS)
        _, summary = run_adapt_layers(cfg, run, manifest, test)
        cache = run.path / PSEUDO_LABELS
        variants[replay] = {**summary, "config": json.loads(cfg.model_dump_json()),
                            "adapted_model": str(run.path / "layer-model")}
    adapt_s = time.perf_counter() - t1
    data = {"base": base, "variants": {str(k): v for k, v in variants.items()},
            "seconds": {"base": base_s, "adapt_total": adapt_s}}
    if args.max_bscans is None:
        write_results("oct_adapt_real", data, table(variants, base, args))
    print(table(variants, base, args))


if __name__ == "__main__":
    main()

"""Sixteen random real MX B-scans (seeded) with the graph search's and the layer models' ILM and
Bruch's membrane drawn on each, for a reader to judge (issue 20: "a report figure of 16 random
real B-scans (seeded) with both methods' boundaries drawn").

- B-scans: the 675 of ``mx_fundus_oct`` (modality ``oct``, 704 x 287 JPEG), read and searched as
  ``oct adapt-layers`` does (spacing unknown: the graph search's nominal spacing scales its
  constraints); ``--n`` of them drawn with ``--seed`` from all of them (``--held-out-only``: from the
  patients the adaptation held out).
- Methods: the graph search (red, wide), the adapted layer model (cyan; ``--adapted``, default the
  newest ``runs/bench-oct-adapt/adapt-mx-replay200-*``: 200 synthetic B-scans replayed, the variant
  that keeps the synthetic accuracy) and the synthetic-trained model it started from (yellow,
  dashed; the ``model`` of the adapted run's config).
- Each panel: the manifest row (no file name: the MX names carry the patient number), DME label,
  whether the adaptation trained on that patient's B-scans (``adapt-train``) or held it out, the
  graph search's quality flags, each model's mean absolute ILM/BM disagreement with it in pixels.

Writes ``benchmarks/results/oct_real_bscans.png`` and ``oct_real_bscans.md/json``. Light (16
B-scans, the graph search and two small forwards, under a minute)::

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/oct_real_bscans.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED_DATA, write_results  # noqa: E402

from retinassl.data.sources import load_source  # noqa: E402
from retinassl.jobs.cross_modal import register_private_rows  # noqa: E402
from retinassl.jobs.oct_adapt import graph_search_labels, patient_groups, read_real_bscans, split_groups  # noqa: E402
from retinassl.jobs.oct_bscan_figure import draw_sample  # noqa: E402
from retinassl.methods.oct_layers import load_layer_model  # noqa: E402

NAME = "oct_real_bscans"
# the line oct_real_boundaries.md and oct_adapt_real.md carry to the figure
FIGURE_LINK = ("Figure: 16 random real B-scans (seed 0) with the graph search's and the layer models' "
               "ILM/BM drawn, titled with the manifest row, flags and disagreement: "
               "`oct_real_bscans.png` (written beside this file by the command; git-ignored: images of real patients' scans stay out of the repository) (`OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python "
               "benchmarks/oct_real_bscans.py --seed 0`; per-panel numbers in "
               "[oct_real_bscans.md](oct_real_bscans.md)).")


def newest(pattern: str) -> Path | None:
    found = sorted((ROOT / "runs" / "bench-oct-adapt").glob(pattern))
    return found[-1] if found else None


def table(rows: list[dict], models: list[str], args: argparse.Namespace, counts: dict) -> str:
    head = "| panel | row | DME | adaptation | graph-search flags | " + " | ".join(
        f"{m}: ILM / BM / mean (px)" for m in models) + " |"
    lines = [head, "|---" * (5 + len(models)) + "|"]
    for k, r in enumerate(rows, 1):
        cells = [f"{r[f'{m}_ilm_px']:.1f} / {r[f'{m}_bm_px']:.1f} / {r[f'{m}_px']:.1f}" for m in models]
        lines.append(f"| {k} | {r['row']} | {'yes' if r['dme'] else 'no'} | {r['split']} | "
                     f"{r['flags'] or 'clean'} | " + " | ".join(cells) + " |")
    means = []
    for m in models:
        for part, sel in (("all", rows), ("held out", [r for r in rows if r["split"] == "held out"])):
            v = [r[f"{m}_px"] for r in sel if np.isfinite(r[f"{m}_px"])]
            if v:
                means.append(f"{m}, {part} ({len(v)}): median {np.median(v):.2f} px, mean {np.mean(v):.2f} px")
    flagged = sum(1 for r in rows if r["flags"])
    return (f"`oct_real_bscans.png` (written beside this file by the command; git-ignored: images of real patients' scans stay out of the repository): {len(rows)} of the {counts['bscans']} MX "
            f"B-scans drawn with seed {args.seed} "
            f"({'held-out patients only' if args.held_out_only else 'all B-scans; `--held-out-only`: the held-out patients'}); "
            "graph search red (wide), adapted layer model cyan, synthetic-trained layer model yellow "
            "dashed; ILM the upper line, BM the lower of each colour. Row = the manifest row "
            "(no file names: they carry the patient number); adaptation = whether the adapted model was "
            "fine-tuned on that patient's B-scans (adapt-train) or held it out.\n\n"
            + "\n".join(lines)
            + f"\n\nFlagged by the graph search: {flagged} of {len(rows)} panels (all 675: "
            f"{counts['bscans'] - counts['clean']}, {1 - counts['clean'] / counts['bscans']:.1%}, "
            "oct_real_boundaries.md). Disagreement with the graph search: " + "; ".join(means) + ".\n\n"
            f"Models: adapted `{counts['adapted']}`, synthetic-trained `{counts['synthetic']}` (runs/ is not "
            "in the repository: `python benchmarks/oct_adapt_real.py` makes them)."
            + ("" if counts.get("adapted_with_clean") in (None, counts["clean"]) else
               f" The adapted model learnt from an earlier graph search (its run counted "
               f"{counts['adapted_with_clean']} of {counts['bscans']} B-scans clean, the current one "
               f"{counts['clean']}); the red lines are the current graph search's."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--adapted", type=Path, default=None, help="the adapted run (default: newest replay200)")
    parser.add_argument("--held-out-only", action="store_true")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "mx_fundus_oct")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("retinassl.data.sources.mx_fundus_oct").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    run = args.adapted or newest("adapt-mx-replay200-*")
    if run is None or not (run / "layer-model" / "model.json").is_file():
        sys.exit("no adapted layer model on disk: run benchmarks/oct_adapt_real.py first (heavy)")
    config = yaml.safe_load((run / "config.yaml").read_text())
    synthetic = Path(config["model"])
    synthetic = synthetic if synthetic.is_absolute() else ROOT / synthetic
    models = {"adapted": load_layer_model(run / "layer-model")}
    if (synthetic / "model.json").is_file():
        models["synthetic-trained"] = load_layer_model(synthetic)
    else:
        logging.warning("the synthetic-trained model %s is not on disk: drawn without it", synthetic)

    manifest = load_source("mx_fundus_oct", root=args.data, modality="oct")
    register_private_rows(manifest)
    groups = patient_groups(manifest, config.get("group_column", "patient"))
    train_idx, val_idx = split_groups(groups, config["val_fraction"], config["seed"])
    if config.get("max_bscans") is not None:
        sys.exit("the adapted run used a subset of the B-scans (max_bscans): its split is not reproduced here")
    split = np.array(["adapt-train"] * len(manifest), dtype=object)
    split[val_idx] = "held out"
    candidates = val_idx if args.held_out_only else np.arange(len(manifest))
    # the graph search only on the drawn B-scans (the same draw as draw_sample's)
    from retinassl.figures.bscan_grid import sample_bscans

    pick = np.asarray(candidates)[sample_bscans(len(candidates), args.n, args.seed)]
    sub = manifest.subset(pick)
    bscans = read_real_bscans(sub, "image", None, None)
    rows, _, reasons = graph_search_labels(bscans)
    dme = manifest.frame["dme"].to_numpy()
    notes = [("DME" if dme[i] == 1 else "no DME") + " · " + split[i] for i in pick]
    path, summary = draw_sample(RESULTS / f"{NAME}.png", bscans, rows, reasons, models,
                                np.arange(len(pick)), len(pick), 0, notes, ids=pick,
                                title=f"{len(pick)} random MX B-scans (seed {args.seed}): graph search vs layer models")
    for s, i in zip(summary, pick):
        s.update({"dme": int(dme[i]), "split": str(split[i])})
    adapt = json.loads((run / "adapt.json").read_text()) if (run / "adapt.json").is_file() else {}
    # the share flagged over all B-scans: the detector's own benchmark (the same detector that flags the
    # panels); the adapted run's count is of the detector it was adapted with, which may be older
    boundaries = RESULTS / "oct_real_boundaries.json"
    clean = (round(json.loads(boundaries.read_text())["real"]["unknown_spacing"]["clean_fraction"] * len(manifest))
             if boundaries.is_file() else adapt.get("counts", {}).get("clean", float("nan")))
    counts = {"bscans": len(manifest), "clean": clean, "adapted_with_clean": adapt.get("counts", {}).get("clean"),
              "adapted": str(run.relative_to(ROOT)), "synthetic": str(synthetic.relative_to(ROOT))}
    write_results(NAME, {"seed": args.seed, "n": len(pick), "held_out_only": args.held_out_only,
                         "figure": str(path.relative_to(ROOT)), "panels": summary, "counts": counts},
                  table(summary, list(models), args, counts))
    print(f"{path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()

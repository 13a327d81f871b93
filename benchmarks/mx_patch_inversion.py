"""Why the IDRiD-trained patch classifiers rank MX's DR photographs below its healthy ones (issue 23).

The SSL-GAN sweeps at 149 labelled IDRiD images score the 322 DR-graded MX photographs
(``evaluate_on``) with the in-domain image score, ``sum_j sigmoid(l_j)`` over the 8 x 8 patch grid
of the prepared image. The supervised ConvNet reaches AUC 0.45 (current recipe) and 0.32 (colour
standardisation): below chance, i.e. it ranks DR photographs lower. This script reads a finished
sweep's MX predictions (the 5 samplings' patch logits, averaged per image) and the MX photographs
as the sweep prepared them, and measures what the ranking follows:

- the AUC for DR of acquisition properties alone (the field of view's share of the prepared square,
  in-FOV mean of each channel): do DR and no-DR photographs differ in how they were taken?
- the score split into its parts: the patches inside the FOV (cells at least half inside) and those
  outside it (black corners, which every image has in a number set by its FOV size);
- the AUC of the in-FOV mean patch probability (independent of how many cells the FOV covers),
  against the sum the sweep reports; and of the mean over the cells wholly inside the FOV (no rim,
  no black border: the tissue alone);
- Spearman correlations of the score with the acquisition properties inside each class.

    .venv/bin/python benchmarks/mx_patch_inversion.py RUN_DIR [RUN_DIR ...] [--name mx_patch_inversion]

Reads only; nothing is trained. No file name or patient number is written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from retinassl.config import config_data, validate  # noqa: E402
from retinassl.data.patch_bank import cell_fov_fractions  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.jobs.patch_config import SSLGANExperimentConfig  # noqa: E402
from retinassl.metrics.classification import roc_auc  # noqa: E402
from retinassl.metrics.image_score import image_scores  # noqa: E402
from retinassl.sweeps.ssl_gan_external import prediction_folder, prepare_externals  # noqa: E402

GRID = 8
PROPERTIES = ("fov_share", "mean_r", "mean_g", "mean_b")


def sweep_config(run_dir: Path) -> SSLGANExperimentConfig:
    """A finished idrid-ssl-gan sweep's configuration (an archived run's data paths under $RETINASSL_DATA_ROOT)."""
    return validate(SSLGANExperimentConfig, config_data(run_dir / "config.yaml"), origin=str(run_dir / "config.yaml"))


def mx_external(config: SSLGANExperimentConfig):
    """The sweep's ``mx`` external set, prepared as the sweep prepared it (the finished run is only read)."""
    with tempfile.TemporaryDirectory() as tmp:
        return next(e for e in prepare_externals(config, "abnormal", RunDir(Path(tmp))) if e.spec.name == "mx")


def image_properties(prepared) -> tuple[pd.DataFrame, np.ndarray]:
    """Per prepared image: FOV share of the square and in-FOV channel means; and per image the
    ``(GRID * GRID,)`` FOV share of each patch cell (row-major, as the patch logits)."""
    rows = []
    for entry in prepared.entries:
        mean = entry.stats["mean"]
        rows.append({"fov_share": float(np.asarray(entry.fov(), dtype=float).mean()), "mean_r": float(mean[0]),
                     "mean_g": float(mean[1]), "mean_b": float(mean[2])})
    return pd.DataFrame(rows), cell_fov_fractions(prepared, range(len(prepared)), GRID)


def analyse(run_dir: Path) -> tuple[dict, list[str]]:
    config = sweep_config(run_dir)
    spec = next(s for s in config.evaluate_on if s.name == "mx")
    external = mx_external(config)
    props, cell_fov = image_properties(external.prepared)
    ids = list(external.ids)
    labels = np.asarray(external.labels, dtype=int)
    out: dict = {"run": run_dir.name, "images": len(ids), "dr": int(labels.sum()),
                 "property_auc": {p: roc_auc(labels, props[p].to_numpy()) for p in PROPERTIES}}
    lines = [f"### `{run_dir.name}` ({len(ids)} MX photographs, {int(labels.sum())} with DR)", "",
             "AUC for DR of acquisition properties alone (no model): "
             + ", ".join(f"{p} {v:.3f}" for p, v in out["property_auc"].items()) + ".", "",
             "| learner | AUC of the sum (the sweep's score) | AUC, in-FOV cells' mean probability | "
             "AUC, wholly-inside cells' mean probability | AUC, outside-FOV cells' sum | "
             "in-FOV cells, no DR / DR (mean) | "
             + " | ".join(f"Spearman score~{p} (no DR / DR)" for p in PROPERTIES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(PROPERTIES)]
    folder = prediction_folder(RunDir(run_dir), spec)
    inside = cell_fov >= 0.5
    for learner in ("convnet", "ssl-gan"):
        files = sorted(folder.glob(f"{learner}-n*.csv"))
        if not files:
            continue
        frames = [pd.read_csv(f).set_index("id").loc[ids] for f in files]
        logits = np.mean([f[[c for c in f.columns if c.startswith("patch_")]].to_numpy() for f in frames], axis=0)
        prob = 1.0 / (1.0 + np.exp(-logits))
        total = prob.sum(axis=1)
        in_mean = np.array([p[m].mean() if m.any() else np.nan for p, m in zip(prob, inside)])
        tissue_mean = image_scores(logits, "tissue", cell_fov)
        out_sum = np.array([p[~m].sum() for p, m in zip(prob, inside)])
        n_in = inside.sum(axis=1)
        rho = {p: [spearmanr(total[labels == k], props[p].to_numpy()[labels == k]).statistic for k in (0, 1)]
               for p in PROPERTIES}
        out[learner] = {"files": len(files), "auc_sum": roc_auc(labels, total),
                        "auc_inside_mean": roc_auc(labels, in_mean),
                        "auc_tissue_mean": roc_auc(labels, tissue_mean), "auc_outside_sum": roc_auc(labels, out_sum),
                        "inside_cells": [float(n_in[labels == 0].mean()), float(n_in[labels == 1].mean())],
                        "spearman": rho}
        r = out[learner]
        lines.append(f"| {learner} ({len(files)} samplings averaged) | {r['auc_sum']:.3f} | {r['auc_inside_mean']:.3f} | "
                     f"{r['auc_tissue_mean']:.3f} | {r['auc_outside_sum']:.3f} | {r['inside_cells'][0]:.1f} / {r['inside_cells'][1]:.1f} | "
                     + " | ".join(f"{a:+.2f} / {b:+.2f}" for a, b in rho.values()) + " |")
    return out, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished idrid-ssl-gan sweeps with evaluate_on mx")
    parser.add_argument("--name", default="mx_patch_inversion")
    args = parser.parse_args()
    data, lines = {"runs": []}, []
    for run in args.runs:
        result, text = analyse(run)
        data["runs"].append(result)
        lines += text + [""]
    write_results(args.name, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

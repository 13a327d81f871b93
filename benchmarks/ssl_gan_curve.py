"""Learning curves of an idrid-ssl-gan sweep's cells: validation patch AUC and the GAN's health
(feature-variance ratio of generated vs real features, p(fake) on real and generated patches) against
the training step, next to each cell's test metrics. Used to ask whether a longer schedule closes the
gap to the paper, e.g. on a one-cell sweep::

    retinassl sweep idrid-ssl-gan --budget cpu "labelled=[40]" "seeds=[0]" \\
        extension.enabled=false budgets.cpu.workers=1 \\
        budgets.cpu.learners.ssl-gan.engine.max_steps=2000 budgets.cpu.learners.convnet.engine.max_steps=2000
    python benchmarks/ssl_gan_curve.py runs/idrid-ssl-gan-cpu-<time> --name ssl_gan_long --command "..."

Writes ``benchmarks/results/<name>.{json,md}``; reads only the run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from retinassl.io.results import read_results  # noqa: E402

HEALTH = ["train/feature_variance_ratio", "train/p_fake_real", "train/p_fake_generated", "train/l_supervised"]


def cell_curve(cell: Path, every: int) -> pd.DataFrame:
    """Per logged step: validation AUC (where computed) and the training curves, mean over ``every`` steps."""
    metrics = pd.read_csv(next(cell.glob("logs/csv/metrics.csv")))
    metrics = metrics.groupby("step").first().reset_index()
    val_column = next((c for c in metrics.columns if c.startswith("val/") and c.endswith("auc")), None)
    bins = (metrics["step"] // every) * every
    train = metrics.drop(columns=[c for c in metrics.columns if c.startswith("val/")] + ["epoch"],
                         errors="ignore").groupby(bins).mean(numeric_only=True).drop(columns="step")
    if val_column is not None:
        val = metrics.dropna(subset=[val_column]).groupby(bins)[val_column].last()
        train[val_column] = val
    return train.reset_index().rename(columns={"step": "step_bin"})


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (3 decimals)."""
    rows = ["| " + " | ".join(str(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    for values in table.itertuples(index=False):
        rows.append("| " + " | ".join("" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v)
                                      for v in values) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", default="ssl_gan_curve")
    parser.add_argument("--every", type=int, default=200, help="steps per row of the curves")
    parser.add_argument("--command", default="", help="the sweep's command line, recorded verbatim")
    args = parser.parse_args()
    results = read_results(args.run / "results.csv")
    parts = [f"Sweep run: `{args.run}`  ", f"Sweep command: `{args.command}`", ""]
    data: dict = {"run": str(args.run), "sweep_command": args.command, "cells": {}}
    for cell in sorted(p for p in (args.run / "cells").iterdir() if p.is_dir()):
        if not any(cell.glob("logs/csv/metrics.csv")):
            continue
        curve = cell_curve(cell, args.every)
        method, _, rest = cell.name.rpartition("-n")
        n, seed = rest.split("-s")
        test = results[(results["method"] == method) & (results["n_labelled"] == int(n))
                       & (results["seed"] == int(seed))
                       & results["metric"].isin(["image_auc", "patch_auc", "localisation_auc"])]
        summary = {r.metric: float(r.value) for r in test.itertuples()}
        data["cells"][cell.name] = {"test": summary, "curve": curve.to_dict(orient="list")}
        columns = ["step_bin"] + [c for c in curve.columns if c.startswith("val/")] + \
                  [c for c in HEALTH if c in curve.columns] + \
                  [c for c in curve.columns if c == "train/main_loss"]
        parts += [f"## {cell.name}", "",
                  "Test: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(summary.items())), "",
                  markdown(curve[columns]), ""]
    write_results(args.name, data, "\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()

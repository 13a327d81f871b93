"""How large an AUC gain a study's test split can show: the paired DeLong standard error of
(pretrained - scratch) per cell of a transfer sweep, from its saved predictions.

Issue 18 asks for +0.05 AUC with DeLong p < 0.05 in 4 of 5 seeds. Whether a test split can show
that at all depends on its size and class balance: with one test set of n images, DeLong's paired
test reaches p < 0.05 only when the difference exceeds 1.96 standard errors, and does so in most
seeds (80 % power) only when the true difference is about 2.8 standard errors. For every (run,
task, init) given, each label fraction and seed: the AUC difference to scratch on the same test
images, its DeLong standard error, the smallest difference significant at p < 0.05 (1.96 SE) and
the difference detectable with 80 % power (2.80 SE); and the test images a +0.05 difference would
need for 80 % power, assuming the standard error shrinks as 1 / sqrt(images) at the same class
balance and ranking quality (an extrapolation, marked as such).

    .venv/bin/python benchmarks/detectable_difference.py RUN:TASK:INIT [RUN:TASK:INIT ...]
        [--name detectable_difference] [--protocol probe]

RUN is a transfer sweep's run directory or its archive (``predictions/transfer/<task>/<protocol>/
<init>/f<fraction>-s<seed>.csv`` beside ``.../scratch/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from retinassl.metrics.stats import delong_test  # noqa: E402

Z_SIGNIFICANT = 1.959964  # two-sided p < 0.05
Z_POWER80 = Z_SIGNIFICANT + 0.841621  # and 80 % power


def cells(folder: Path) -> dict[tuple[float, int], Path]:
    """``(fraction, seed) -> predictions file`` of one init's folder."""
    out = {}
    for path in folder.glob("f*-s*.csv"):
        fraction, seed = path.stem[1:].split("-s")
        out[(float(fraction), int(seed))] = path
    return out


def paired_se(pretrained: Path, scratch: Path) -> tuple[float, float, int, int]:
    """(AUC difference, its DeLong standard error, positives, negatives) of two prediction files
    that must score the same test images (each once), both classes present."""
    a, b = pd.read_csv(pretrained), pd.read_csv(scratch)
    if a["id"].duplicated().any() or b["id"].duplicated().any() or set(a["id"]) != set(b["id"]):
        raise SystemExit(f"{pretrained} and {scratch} do not hold the same test images, each once")
    both = a.merge(b, on=["id", "label"], suffixes=("_a", "_b"))
    if len(both) != len(a):
        raise SystemExit(f"{pretrained} and {scratch} give some test images different labels")
    labels = both["label"].to_numpy(int)
    if labels.min() == labels.max():
        raise SystemExit(f"{pretrained}: its test images are all of one class; no AUC")
    test = delong_test(labels, both["score_a"].to_numpy(float), both["score_b"].to_numpy(float))
    if test.standard_error <= 0:
        raise SystemExit(f"{pretrained} and {scratch} rank the test images alike (zero variance of the difference)")
    return test.difference, test.standard_error, int(labels.sum()), int((1 - labels).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="RUN:TASK:INIT")
    parser.add_argument("--name", default="detectable_difference")
    parser.add_argument("--protocol", default="probe")
    args = parser.parse_args()
    rows = []
    for study in args.studies:
        run, task, init = study.rsplit(":", 2)
        base = Path(run) / "predictions" / "transfer" / task / args.protocol
        if not (base / init).is_dir() or not (base / "scratch").is_dir():
            raise SystemExit(f"{study}: no {base / init} beside {base / 'scratch'}")
        ours, scratch = cells(base / init), cells(base / "scratch")
        unpaired = sorted(set(ours) ^ set(scratch))
        if unpaired:
            print(f"{study}: cells (fraction, seed) without a partner, left out: {unpaired}", file=sys.stderr)
        for key in sorted(set(ours) & set(scratch)):
            difference, se, positives, negatives = paired_se(ours[key], scratch[key])
            rows.append({"run": Path(run).name, "task": task, "init": init, "fraction": key[0], "seed": key[1],
                         "positives": positives, "negatives": negatives, "difference": difference, "se": se,
                         "significant_from": Z_SIGNIFICANT * se, "power80_from": Z_POWER80 * se,
                         "higher": bool(difference / se > Z_SIGNIFICANT)})
    table = pd.DataFrame(rows)
    summary = (table.groupby(["run", "task", "init", "fraction"], sort=False)
               .agg(seeds=("seed", "size"), positives=("positives", "first"), negatives=("negatives", "first"),
                    difference=("difference", "mean"), se=("se", "mean"),
                    significant_from=("significant_from", "mean"), power80_from=("power80_from", "mean"),
                    higher=("higher", "sum"))
               .reset_index())
    images = summary["positives"] + summary["negatives"]
    summary["images_needed"] = np.ceil(images * (summary["power80_from"] / 0.05) ** 2).astype(int)
    lines = ["Per (run, task, init, label fraction), means over seeds: the AUC difference to scratch on the same "
             "test images, its paired DeLong standard error (SE), the smallest observed difference with p < 0.05 "
             "(1.96 SE) and the true difference a seed detects with 80 % probability (2.80 SE); the seeds with "
             "p < 0.05 and higher (the issue's +0.05 not required); the test images at which a true +0.05 would "
             "be detected with 80 % probability per seed (extrapolated: SE taken to shrink as 1 / sqrt(images) "
             "at the same balance and ranking quality; the spread between labelled subsets, which more test "
             "images do not remove, left out). At fraction 1 the seeds share the training images, so they are "
             "not independent replicates.", "",
             "| run | task | init | fraction | seeds | test images (pos / neg) | difference | SE | p < 0.05 from | "
             "80 % power at | seeds p < 0.05, higher | test images for +0.05 (extrapolated) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| `{r.run}` | {r.task} | {r.init} | {r.fraction:g} | {r.seeds} | "
                     f"{r.positives + r.negatives} ({r.positives} / {r.negatives}) | {r.difference:+.3f} | "
                     f"{r.se:.3f} | {r.significant_from:.3f} | {r.power80_from:.3f} | {r.higher} of {r.seeds} | "
                     f"{r.images_needed:,} |")
    write_results(args.name, {"protocol": args.protocol, "cells": rows,
                              "summary": summary.to_dict(orient="records")}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

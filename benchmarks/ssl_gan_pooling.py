"""How an idrid-ssl-gan sweep's patch logits become an image score, chosen on validation images.

The image-level AUC of the patch classifiers is lost to shifts of whole images' logits
(``ssl_gan_errors_select.md``: the image AUC would be about 0.99 if patch errors were independent,
and is 0.82-0.86). This script scores the kept classifier of every cell of finished sweeps on the
sweep's **validation** images (never used to train the classifier; the SSL-GAN's ``select_on_validation``
also kept its weights on them) and on its test images, pools the patch logits by each candidate rule
of :func:`retinassl.metrics.image_score.image_scores` (``sum``: the paper; ``tissue``: the mean over
the cells inside the field of view) and a hypothesis, ``relative`` at several quantiles (each tissue
cell against its own image's level: the mean over the tissue cells of ``sigmoid(l_j - b)``, ``b`` a
quantile of that image's tissue logits, meant to remove the whole-image shifts), chooses one rule per learner by its mean validation AUC over the cells (a tie goes
to the paper's ``sum``), and only then reports the test AUCs, with paired DeLong tests of the chosen
rule against ``sum`` on the same test images. The test AUCs of the rules not chosen are shown too,
marked as such: they are what the choice could not see.

``--views`` adds the overlapping patches Lecouat et al. name as future work, and flips: the paper's
``sum`` averaged over the grid and the grids offset by half a cell (``sum, 2 grids``: the grid and its
diagonal half-cell offset; ``sum, 4 grids``: the offsets 0 and 1/2 cell in each direction, i.e. cells at
a half-cell stride, each grid weighted alike; the offset grids' last row and column lie half past the
image's edge and see black there, like the background around the field of view), and over the 4 flips
of every cell (``sum, flips``; flips are in the SSL-GAN's training augmentation, not in the ConvNet's).

    .venv/bin/python benchmarks/ssl_gan_pooling.py RUN [RUN ...] [--quantiles 0.1,0.25,0.5] [--views]
        [--labelled 149] [--name ssl_gan_pooling]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from retinassl.config import config_data, validate  # noqa: E402
from retinassl.data.patch_bank import build_patch_bank  # noqa: E402
from retinassl.jobs.patch_config import SSLGANExperimentConfig  # noqa: E402
from retinassl.jobs.patch_data import load_patch_data  # noqa: E402
from retinassl.jobs.patch_evaluation import predict_bank  # noqa: E402
from retinassl.metrics.classification import roc_auc  # noqa: E402
from retinassl.metrics.image_score import TISSUE_SHARE, image_scores  # noqa: E402
from retinassl.metrics.stats import delong_test  # noqa: E402
from retinassl.models.patch_classifier import PatchClassifier  # noqa: E402
from retinassl.sweeps.ssl_gan import parse_cell_name  # noqa: E402


CENTRE = (0, 0, "none")
FLIPS = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}


def logits_and_fov(classifier: PatchClassifier, prepared, rows: np.ndarray,
                   views: bool = False) -> tuple[dict, np.ndarray]:
    """``{(dy, dx, flip): (n, grid**2) patch logits}`` and each cell's field-of-view share, of ``rows``:
    the grid itself (``CENTRE``), and with ``views`` the grids offset by ``dy, dx`` in {0, 1/2} of a cell
    and the grid's cells flipped. (Offsets of -1/2 would repeat the +1/2 grids one cell over.)"""
    p = classifier.patch_size
    half = p // 2 if views else 0
    bank = build_patch_bank(prepared, rows, classifier.grid, p, half, labelled=False)
    wanted = ([(dy, dx, "none") for dy, dx in itertools.product((0, half), repeat=2)]
              + [(0, 0, f) for f in FLIPS if f != "none"]) if views else [CENTRE]
    out = {}
    for dy, dx, flip in wanted:
        windows = bank.windows[:, :, half + dy:half + dy + p, half + dx:half + dx + p]
        if FLIPS[flip]:
            windows = windows.flip(FLIPS[flip])
        out[(dy, dx, flip)] = predict_bank(classifier, dataclasses.replace(bank, windows=windows.contiguous(), margin=0))
    return out, bank.fov.reshape(bank.n_images, bank.per_image)


def mean_of_sums(views: dict, keys: list) -> np.ndarray:
    """The paper's ``sum`` image score averaged over the ``views`` at ``keys``."""
    return np.mean([image_scores(views[k], "sum") for k in keys], axis=0)


def relative_scores(logits: np.ndarray, fov: np.ndarray, quantile: float) -> np.ndarray:
    """``(n,)`` the mean over each image's tissue cells (at least ``TISSUE_SHARE`` inside the field of
    view) of ``sigmoid(l_j - b)``, ``b`` the ``quantile`` of those cells' logits."""
    from scipy.special import expit

    largest = fov.max(axis=1, keepdims=True)  # an image without a whole cell: its most complete ones, as `tissue`
    tissue = fov >= np.where(largest >= TISSUE_SHARE, TISSUE_SHARE, TISSUE_SHARE * largest)
    level = np.nanquantile(np.where(tissue, logits, np.nan), quantile, axis=1, keepdims=True)
    return (expit(logits - level) * tissue).sum(axis=1) / tissue.sum(axis=1)


def rules(quantiles: list[float], views: bool = False) -> dict:
    """Candidate name -> ``f(views, fov)`` image scores (``views`` from :func:`logits_and_fov`)."""
    out = {"sum": lambda v, fov: image_scores(v[CENTRE], "sum"),
           "tissue": lambda v, fov: image_scores(v[CENTRE], "tissue", fov)}
    out.update({f"relative q={q:g}": (lambda v, fov, q=q: relative_scores(v[CENTRE], fov, q)) for q in quantiles})
    if views:
        out["sum, 2 grids"] = lambda v, fov: mean_of_sums(v, [k for k in v if k[2] == "none" and k[0] == k[1]])
        out["sum, 4 grids"] = lambda v, fov: mean_of_sums(v, [k for k in v if k[2] == "none"])
        out["sum, flips"] = lambda v, fov: mean_of_sums(v, [k for k in v if k[:2] == (0, 0)])
    return out


def score_run(run: Path, candidates: dict, views: bool = False, labelled: set[int] | None = None) -> list[dict]:
    """One row per (cell, rule): validation and test AUC, and the test scores for the paired tests
    (the cells with ``labelled`` labelled images only, when given)."""
    raw = config_data(run / "config.yaml")
    config = validate(SSLGANExperimentConfig, raw, origin=str(run / "config.yaml"))
    data = load_patch_data(config.data, config.preprocess, config.split, config.patches)
    prepared = data.prepared
    out = []
    for cell in sorted((run / "cells").iterdir()):
        if not (cell / "classifier" / "model.safetensors").is_file():
            continue
        learner, n_labelled, seed = parse_cell_name(cell.name)
        if labelled and n_labelled not in labelled:
            continue
        classifier, _ = PatchClassifier.load(cell / "classifier")
        classifier.eval()
        parts = {name: (rows, data.labels(rows), *logits_and_fov(classifier, prepared, rows, views))
                 for name, rows in (("val", data.val), ("test", data.test))}
        saved = pd.read_csv(run / "predictions" / "ssl-gan" / f"{cell.name}.csv")
        own = image_scores(parts["test"][2][CENTRE], classifier.image_score, parts["test"][3])
        if not np.allclose(own, saved["score"].to_numpy(), rtol=1e-4, atol=1e-4):  # the sweep's own test scores
            raise AssertionError(f"{cell}: the kept classifier does not reproduce the saved test scores")
        for name, score in candidates.items():
            row = {"run": run.name, "cell": cell.name, "learner": learner, "n_labelled": n_labelled,
                   "seed": seed, "rule": name}
            for part, (_, labels, logits, fov) in parts.items():
                scores = score(logits, fov)
                row[f"{part}_auc"] = roc_auc(labels, scores)
                if part == "test":
                    row["test_labels"], row["test_scores"] = labels.tolist(), scores.tolist()
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--quantiles", default="0.1,0.25,0.5")
    parser.add_argument("--views", action="store_true", help="add shifted grids and flips (see above)")
    parser.add_argument("--labelled", default="", help="comma-separated labelled counts to score (default: all)")
    parser.add_argument("--name", default="ssl_gan_pooling")
    args = parser.parse_args()
    candidates = rules([float(q) for q in args.quantiles.split(",") if q], args.views)
    labelled = {int(n) for n in args.labelled.split(",") if n} or None
    rows = pd.DataFrame([row for run in args.runs for row in score_run(run, candidates, args.views, labelled)])
    lines, chosen_of = [], {}
    for (learner, n_labelled), group in rows.groupby(["learner", "n_labelled"], sort=True):
        val = group.groupby("rule", sort=False)["val_auc"].mean()
        best = max(candidates, key=lambda r: (round(val[r], 12), r == "sum"))  # a tie: the paper's rule
        chosen_of[(learner, int(n_labelled))] = best
        lines += [f"\n**{learner}, {n_labelled} labelled** ({group['cell'].nunique()} cells; chosen on validation: "
                  f"**{best}**)\n", "| rule | validation AUC (mean ± sd) | test AUC (mean ± sd) | test AUC per cell |",
                  "|---|---|---|---|"]
        for rule in candidates:
            r = group[group["rule"] == rule].sort_values(["run", "seed"])
            mark = " (chosen)" if rule == best else ""
            lines.append(f"| {rule}{mark} | {r['val_auc'].mean():.3f} ± {r['val_auc'].std(ddof=1):.3f} | "
                         f"{r['test_auc'].mean():.3f} ± {r['test_auc'].std(ddof=1):.3f} | "
                         + ", ".join(f"{v:.3f}" for v in r["test_auc"]) + " |")
        if best != "sum":
            tests = []
            for cell, c in group.groupby("cell", sort=True):
                a, b = c[c["rule"] == best].iloc[0], c[c["rule"] == "sum"].iloc[0]
                test = delong_test(np.asarray(a["test_labels"]), np.asarray(a["test_scores"]), np.asarray(b["test_scores"]))
                tests.append(f"{cell} {test.difference:+.3f} (p = {test.p_value:.3g})")
            lines.append(f"\nPaired DeLong on the test images, {best} - sum: " + "; ".join(tests) + ".")
    header = (f"Runs: {', '.join(f'`{r}`' for r in args.runs)}. Validation and test images of each sweep's "
              "split; each cell's kept classifier, which reproduces the sweep's saved test scores. One rule chosen "
              "per learner and labelled count by the mean validation AUC; test AUCs of the other rules shown for "
              "what the choice could not see.\n")
    write_results(args.name, {"runs": [str(r) for r in args.runs], "quantiles": args.quantiles, "views": args.views,
                              "chosen": {f"{k[0]}-n{k[1]}": v for k, v in chosen_of.items()},
                              "cells": rows.drop(columns=["test_labels", "test_scores"]).to_dict("records")},
                  header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

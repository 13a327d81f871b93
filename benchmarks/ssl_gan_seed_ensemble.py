"""Is an ensemble of an idrid-ssl-gan sweep's samplings better than one of them? Judged on validation.

At the largest label count (all training images labelled: checked against the run's ``split.csv``)
every sampling of the sweep trains on the same labelled images and keeps the same validation and test
images (the split has its own seed); the samplings differ only in their training seed. Averaging
their image scores is then an ensemble of models trained on the same data (Lakshminarayanan et al.
2017), at k times the cost. The decision is taken on the **validation** images; the test columns
are read beside it, not used for it:

- every cell's kept classifier scores the validation and test images through ``retinassl predict``'s
  own path (:func:`retinassl.jobs.predict.predict`: the preprocessing recorded with the model), and
  its test scores are checked against the sweep's saved predictions (they must agree);
- per sampling: validation and test image AUC (the rule the sweep uses: sum of patch sigmoids);
- the ensemble (mean of the samplings' image scores): validation and test AUC; the validation gain
  (ensemble minus the members' mean AUC) with its 95 % percentile bootstrap interval over the
  validation images (resampled within each class, the same draw for the ensemble and every member);
  the test AUC's 95 % bootstrap interval over test images
  (:func:`~retinassl.metrics.intervals.seed_image_bootstrap` with one score row), and paired DeLong
  tests of the ensemble against each member on the test images;
- how alike the samplings rank the images within each class (mean pairwise Spearman correlation).

The decision rule: the ensemble counts as a lever when its validation gain is at least ``GAIN``
(0.01, the size of gain that would matter next to the 0.015 between the best recipe and issue 23's
0.90). 50 validation images resolve far less than that (the gain's interval says how much), and each
member kept the validation pass that scored best on these same images (its recipe's
``select_on_validation``, on patch AUC), which flatters the members' validation AUC against the
ensemble's: read the rule as "no sign of a gain", not as a test.

    .venv/bin/python benchmarks/ssl_gan_seed_ensemble.py recipe=RUN [recipe=RUN ...] --data-root DATA
        [--labelled 149] [--name ssl_gan_seed_ensemble] [--command "..."]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_results  # noqa: E402

from retinassl.data.sources.idrid import idrid_ssl_gan_set  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.io.saved_model import is_saved_model  # noqa: E402
from retinassl.jobs.predict import predict  # noqa: E402
from retinassl.metrics.classification import roc_auc  # noqa: E402
from retinassl.metrics.intervals import seed_image_bootstrap  # noqa: E402
from retinassl.metrics.stats import delong_test  # noqa: E402
from retinassl.sweeps.ssl_gan import cell_name, predictions_path  # noqa: E402

LEARNER = "ssl-gan"
AGREE = 1e-6  # largest difference allowed between predict's test scores and the sweep's
GAIN = 0.01   # validation gain of the ensemble over its members' mean that counts as a lever


def cell_scores(run: Path, data_root: Path, n: int) -> tuple[pd.Series, dict[int, pd.Series]]:
    """``(labels, {seed: scores})`` over the run's validation and test images (indexed by id), each
    seed's kept classifier applied through :func:`retinassl.jobs.predict.predict`."""
    split = pd.read_csv(run / "split.csv").set_index("id")
    if n < int((split["split"] == "train").sum()):
        raise SystemExit(f"{run}: {n} labelled of {int((split['split'] == 'train').sum())} training images: the "
                         f"samplings label different images, so their average is no ensemble of one training set")
    wanted = split.index[split["split"].isin(["val", "test"])].astype(str)
    full = idrid_ssl_gan_set(data_root / "idrid")
    manifest = full.subset(full.frame["id"].astype(str).isin(set(wanted)).to_numpy())
    if len(manifest) != len(wanted):
        raise SystemExit(f"{run}: {len(wanted) - len(manifest)} validation/test image(s) of split.csv not found "
                         f"under {data_root / 'idrid'}")
    scores: dict[int, pd.Series] = {}
    for seed in range(100):
        model = run / "cells" / cell_name(LEARNER, n, seed) / "classifier"
        swept_file = predictions_path(RunDir(run), LEARNER, n, seed)
        if not (is_saved_model(model) and swept_file.is_file()):  # not kept, or still training
            continue
        with tempfile.TemporaryDirectory() as out:
            frame = pd.read_csv(predict(model, manifest, Path(out) / "predicted"))
        score = frame.set_index(frame["id"].astype(str))["score"]
        swept = pd.read_csv(swept_file)
        gap = float(np.abs(score.loc[swept["id"].astype(str)].to_numpy() - swept["score"].to_numpy()).max())
        if gap > AGREE:
            raise SystemExit(f"{model}: predict's test scores differ from the sweep's by up to {gap:.3g}")
        scores[seed] = score
    if len(scores) < 2:
        raise SystemExit(f"{run}: fewer than 2 kept {LEARNER} classifiers with {n} labelled images (cells/*/classifier)")
    return split["abnormal"].astype(int), scores


def gain_interval(labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of (ensemble AUC - mean member AUC) over images resampled
    within each class; ``scores`` ``(members, images)``, the ensemble their mean."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in (0, 1)]
    gains = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, len(g), replace=True) for g in groups])
        y, s = labels[idx], scores[:, idx]
        gains.append(roc_auc(y, s.mean(axis=0)) - np.mean([roc_auc(y, member) for member in s]))
    low, high = np.percentile(gains, [2.5, 97.5])
    return float(low), float(high)


def within_class_agreement(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Mean Spearman correlation over pairs of members of their scores of the images of each class
    (``scores`` ``(members, images)``): how alike the samplings rank the healthy images among
    themselves, and the diseased ones. Near 1, averaging them cannot reorder much."""
    from itertools import combinations

    from scipy.stats import spearmanr

    return {name: float(np.mean([spearmanr(scores[a, labels == c], scores[b, labels == c])[0]
                                 for a, b in combinations(range(len(scores)), 2)]))
            for c, name in ((0, "healthy"), (1, "diseased"))}


def ensemble_table(labels: pd.Series, split: pd.Series, scores: dict[int, pd.Series]) -> dict:
    """Per-sampling and ensemble AUCs on validation and test, the test interval and DeLong tests."""
    out: dict = {"seeds": sorted(scores)}
    frame = pd.DataFrame(scores)
    for part in ("val", "test"):
        ids = split.index[split == part]
        y = labels.loc[ids].to_numpy(int)
        members = frame.loc[ids]
        out[part] = {"images": len(y), "positive": int(y.sum()),
                     "members": [roc_auc(y, members[s].to_numpy(float)) for s in sorted(scores)],
                     "ensemble": roc_auc(y, members.mean(axis=1).to_numpy(float))}
        out[part]["members_mean"] = float(np.mean(out[part]["members"]))
        out[part]["within_class_spearman"] = within_class_agreement(y, members.to_numpy(float).T)
        if part == "val":
            out[part]["gain_interval"] = gain_interval(y, members.to_numpy(float).T)
        if part == "test":
            ensemble = members.mean(axis=1).to_numpy(float)
            out[part]["ensemble_interval"] = seed_image_bootstrap(y, ensemble[None], "auc")
            out[part]["delong_vs_members"] = [
                {"seed": s, "difference": (t := delong_test(y, ensemble, members[s].to_numpy(float))).difference,
                 "p": t.p_value} for s in sorted(scores)]
    out["validation_gain"] = out["val"]["ensemble"] - out["val"]["members_mean"]
    out["lever"] = bool(out["validation_gain"] >= GAIN)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="recipe=RUN_DIRECTORY (a sweep whose cells kept their classifiers)")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA)
    parser.add_argument("--labelled", type=int, default=149)
    parser.add_argument("--name", default="ssl_gan_seed_ensemble")
    parser.add_argument("--command", default="", help="the sweeps' command lines, recorded verbatim")
    args = parser.parse_args()
    if not (args.data_root / "idrid").is_dir():
        raise SystemExit(f"{args.data_root / 'idrid'}: IDRiD not found (give --data-root)")
    data: dict = {"labelled": args.labelled, "sweep_command": args.command, "recipes": {}}
    lines = [f"Samplings of each sweep at {args.labelled} labelled images (same labelled, validation and test images; "
             "only the training seed differs). Image AUC: sum of patch sigmoids, scored through `retinassl predict` "
             "(test scores checked equal to the sweep's). Ensemble: mean of the samplings' image scores.", "",
             "| recipe | samplings | validation / test images (DR) | validation AUC per sampling | validation: members' "
             f"mean / ensemble | validation gain [95 % interval] (lever: >= {GAIN:g}) | test AUC per sampling | "
             "test: members' mean / ensemble [95 % interval] | DeLong ensemble - member (test; difference, p) |",
             "|---|---|---|---|---|---|---|---|---|"]
    agreement = ["", "How alike the samplings rank the images within each class (mean Spearman correlation over pairs "
                 "of samplings):", "", "| recipe | validation: healthy / diseased | test: healthy / diseased |",
                 "|---|---|---|"]
    for item in args.runs:
        recipe, run = item.split("=", 1)
        labels, scores = cell_scores(Path(run), args.data_root, args.labelled)
        split = pd.read_csv(Path(run) / "split.csv").set_index("id")["split"]
        table = ensemble_table(labels, split, scores)
        data["recipes"][recipe] = {"run": run, **table}
        val, test = table["val"], table["test"]
        lo, hi = test["ensemble_interval"]
        tests = "; ".join(f"s{t['seed']} {t['difference']:+.3f} (p={t['p']:.2g})" for t in test["delong_vs_members"])
        g_lo, g_hi = val["gain_interval"]
        lines.append(f"| {recipe} | {', '.join(map(str, table['seeds']))} | {val['images']} ({val['positive']}) / "
                     f"{test['images']} ({test['positive']}) | {' / '.join(f'{v:.3f}' for v in val['members'])} | "
                     f"{val['members_mean']:.3f} / {val['ensemble']:.3f} | {table['validation_gain']:+.3f} "
                     f"[{g_lo:+.3f}, {g_hi:+.3f}] ({'lever' if table['lever'] else 'no lever'}) | "
                     f"{' / '.join(f'{v:.3f}' for v in test['members'])} | {test['members_mean']:.3f} / "
                     f"{test['ensemble']:.3f} [{lo:.3f}, {hi:.3f}] | {tests} |")
        agreement.append(f"| {recipe} | {val['within_class_spearman']['healthy']:.3f} / "
                         f"{val['within_class_spearman']['diseased']:.3f} | {test['within_class_spearman']['healthy']:.3f} / "
                         f"{test['within_class_spearman']['diseased']:.3f} |")
    lines += agreement
    lines += ["", "Intervals: percentile bootstrap over images (2,000 replicates, resampled within each class). The "
              "members' validation AUCs are of the passes each kept for its best patch AUC on these validation images (optimistic)."]
    write_results(args.name, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

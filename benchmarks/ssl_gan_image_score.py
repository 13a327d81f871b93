"""The patch classifiers' image score over the field of view's tissue cells only (issue 23): does
leaving out the black border and the FOV rim make the IDRiD-trained SSL-GAN and ConvNet survive MX?

`benchmarks/results/mx_patch_inversion.md` found that on MX the patch scores follow how the photograph
was taken (field-of-view share, colour), and that the mean probability over the cells wholly inside
the FOV ranks MX's DR photographs better than the paper's sum over all 64 cells. This script rescores
finished idrid-ssl-gan sweeps (their kept classifiers and predictions; nothing is trained) with both
rules of :func:`retinassl.metrics.image_score.image_scores` (``sum``, ``tissue``):

- the rule is **chosen on validation data only**: the sweep's own validation images (carved from
  IDRiD's training images; neither the test split nor MX), per recipe and learner, by the mean image
  AUC over the samplings (a tie keeps the paper's ``sum``);
- then reported on IDRiD's test split and on MX (the DR-graded photographs, any DR) for both rules,
  with a paired DeLong test (tissue vs sum) per sampling.

The script first checks that it rescores the sweep's own inputs: the validation and test images are
those of the run's ``split.csv``, the classifiers' recomputed test logits are the saved ones, and
each saved score is reproduced by the classifier's rule. Caveat for reading MX: the tissue rule was
designed after looking at MX (``mx_patch_inversion.md``), so its MX gain is post hoc until a second
external camera confirms it.

    .venv/bin/python benchmarks/ssl_gan_image_score.py current=RUN robust=RUN [augment=RUN ...] [--command "..."]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from mx_patch_inversion import mx_external, sweep_config  # noqa: E402

from retinassl.data.patch_bank import cell_fov_fractions  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.jobs.patch_data import load_patch_data  # noqa: E402
from retinassl.jobs.patch_evaluation import patch_logits_of, predict_bank  # noqa: E402
from retinassl.metrics.image_score import image_scores  # noqa: E402
from retinassl.metrics.classification import roc_auc  # noqa: E402
from retinassl.metrics.stats import delong_test, significant_by_sign  # noqa: E402
from retinassl.models.patch_classifier import PatchClassifier  # noqa: E402
from retinassl.sweeps.ssl_gan_external import prediction_folder  # noqa: E402

LEARNERS = ("ssl-gan", "convnet")
RULES = ("sum", "tissue")


def rescore(run_dir: Path, labelled: int) -> dict:
    """Per learner and sampling (``labelled`` images): labels and scores under both rules on
    validation, test and MX."""
    config = sweep_config(run_dir)
    data = load_patch_data(config.data, config.preprocess, config.split, config.patches, None)
    # the sweep's own split (split.csv), so that the validation images are the sweep's
    split = pd.read_csv(run_dir / "split.csv", dtype={"id": str})
    for name, rows in (("val", data.val), ("test", data.test)):
        assert sorted(data.ids(rows)) == sorted(split.loc[split["split"] == name, "id"]), (run_dir, name)
    grid = config.patches.grid
    fov = {"test": dict(zip(data.ids(data.test), cell_fov_fractions(data.prepared, data.test, grid)))}
    spec = next(s for s in config.evaluate_on if s.name == "mx")
    external = mx_external(config)
    fov["mx"] = dict(zip(external.ids, cell_fov_fractions(external.prepared, range(len(external.prepared)), grid)))
    folders = {"test": run_dir / "predictions" / "ssl-gan", "mx": prediction_folder(RunDir(run_dir), spec)}
    val_labels = data.labels(data.val)
    out: dict = {}
    for learner in LEARNERS:
        for path in sorted(folders["test"].glob(f"{learner}-n{labelled:03d}-s*.csv")):
            cell = path.stem
            classifier, _ = PatchClassifier.load(run_dir / "cells" / cell / "classifier")
            # the benchmark's inputs are the sweep's: the test logits recomputed = the saved ones
            test_bank = data.bank("test", classifier.patch_size, 0)
            saved = pd.read_csv(path, dtype={"id": str})
            assert list(saved["id"]) == list(data.ids(data.test)), (cell, "test ids")
            assert np.allclose(predict_bank(classifier, test_bank), patch_logits_of(saved), atol=1e-4), cell
            bank = data.bank("val", classifier.patch_size, 0)
            val_logits = predict_bank(classifier, bank)
            val_fov = bank.fov.reshape(bank.n_images, bank.per_image)
            entry = {"val": {"labels": val_labels,
                             **{r: image_scores(val_logits, r, val_fov) for r in RULES}}}
            for name, folder in folders.items():
                table = pd.read_csv(folder / f"{cell}.csv", dtype={"id": str})
                assert sorted(table["id"]) == sorted(fov[name]), (cell, name, "ids")
                cells = np.stack([fov[name][i] for i in table["id"]])
                logits = patch_logits_of(table)
                entry[name] = {"labels": table["label"].to_numpy(int),
                               **{r: image_scores(logits, r, cells) for r in RULES}}
                # the sweep's own score (the classifier's rule) is reproduced
                assert np.allclose(entry[name][classifier.image_score], table["score"].to_numpy(float),
                                   rtol=1e-5), (cell, name)
            out.setdefault(learner, {})[cell] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="recipe=RUN_DIRECTORY (finished idrid-ssl-gan sweeps with evaluate_on mx)")
    parser.add_argument("--command", default="", help="the sweeps' command lines, recorded verbatim")
    parser.add_argument("--name", default="ssl_gan_image_score")
    parser.add_argument("--labelled", type=int, default=149, help="the cells' labelled-image count")
    args = parser.parse_args()
    runs = {name: Path(run) for name, run in (item.split("=", 1) for item in args.runs)}
    data: dict = {"runs": {k: str(v) for k, v in runs.items()}, "sweep_command": args.command, "results": {}}
    lines = ["| recipe | learner | validation AUC, sum / tissue | chosen on validation | IDRiD test AUC, sum -> tissue "
             "| MX DR (external) AUC, sum -> tissue | MX: tissue vs sum, p < 0.05 (higher / lower) |",
             "|---|---|---|---|---|---|---|"]
    for recipe, run in runs.items():
        for learner, cells in rescore(run, args.labelled).items():
            auc = {split: {r: [roc_auc(c[split]["labels"], c[split][r]) for c in cells.values()] for r in RULES}
                   for split in ("val", "test", "mx")}
            val = {r: float(np.mean(auc["val"][r])) for r in RULES}
            chosen = "tissue" if val["tissue"] > val["sum"] else "sum"
            tests = {}
            for split in ("test", "mx"):
                results = [delong_test(c[split]["labels"], c[split]["tissue"], c[split]["sum"]) for c in cells.values()]
                ps, diffs = [t.p_value for t in results], [t.difference for t in results]
                better, worse = significant_by_sign(ps, diffs)
                tests[split] = {"p": ps, "difference": diffs, "better": better, "worse": worse}
            data["results"][f"{recipe} / {learner}"] = {"cells": list(cells), "auc": auc, "chosen": chosen,
                                                        "delong_tissue_vs_sum": tests}

            def fmt(split: str, rule: str) -> str:
                values = np.array(auc[split][rule])
                return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"

            lines.append(f"| {recipe} | {learner} ({len(cells)} samplings) | {val['sum']:.3f} / {val['tissue']:.3f} "
                         f"| {chosen} | {fmt('test', 'sum')} -> {fmt('test', 'tissue')} | {fmt('mx', 'sum')} -> "
                         f"{fmt('mx', 'tissue')} | {tests['mx']['better']} / {tests['mx']['worse']} of {len(cells)} |")
    lines += ["", "AUC: mean ± sd over the samplings. sum: the paper's sum of the 64 patch probabilities (the "
              "sweeps' score, reproduced); tissue: the mean probability of the cells at least 99 % inside the "
              "field of view. The rule is chosen per recipe and learner on the sweep's validation images "
              "(IDRiD training images); the test and MX columns show both rules either way."]
    write_results(args.name, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

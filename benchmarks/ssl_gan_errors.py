"""Where the image-level AUC of an idrid-ssl-gan sweep is lost: an anatomy of its saved patch logits.

Lecouat et al. report a patch AUC of about 80 and an image AUC of about 98; our sweeps match the
patch AUC and stay near 81-86 at the image level. For every planned cell of a finished sweep this
script computes :mod:`retinassl.metrics.anatomy` (lesion and context AUC, the between-image share
of the healthy images' logit variance, the image AUC if patch errors were independent, on both
sides or on one), with the test images' patch labels from the sweep's ``test-patch-labels.csv``
(recomputed from the data for sweeps that predate it).

It also fits a logistic regression on global image statistics alone (in-FOV mean and sd of each
channel, maximum, FOV size), to show how far the two sources of the 249-image set (part-A DR
images, part-B grade-0 images) are separable without looking at any lesion; and, per DR test
image at the largest label count, how many healthy images each learner scores above it, whether its
lesion patches stand out from healthy tissue, and its mean blue level (the DR images every learner
misses are the blue-rich ones).

    .venv/bin/python benchmarks/ssl_gan_errors.py RUN_DIR [--name ssl_gan_errors] [--draws 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from retinassl.config import config_data, validate  # noqa: E402
from retinassl.metrics.classification import roc_auc  # noqa: E402
from retinassl.metrics.anatomy import (ANATOMY_METRICS, ANATOMY_TITLES, TEST_PATCH_LABELS,  # noqa: E402
                                       anatomy_table, diseased_image_table)
from retinassl.jobs.patch_config import SSLGANExperimentConfig  # noqa: E402
from retinassl.sweeps.ssl_gan import PREDICTIONS, test_patch_labels  # noqa: E402
from retinassl.jobs.patch_data import load_patch_data  # noqa: E402
from retinassl.report.ssl_gan import read_predictions  # noqa: E402


def global_features(prepared) -> np.ndarray:
    """Per image: in-FOV mean and sd of each channel, the maximum, and the FOV's share of the square."""
    rows = []
    for entry in prepared.entries:
        stats = entry.stats
        rows.append([*stats["mean"], *stats["std"], stats["max"], float(np.asarray(entry.fov()).mean())])
    return np.asarray(rows, dtype=float)


def global_feature_auc(features: np.ndarray, labels: np.ndarray, repeats: int = 10) -> tuple[float, float]:
    """Cross-validated AUC (mean, sd over repeats of stratified 5-fold CV) of a logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    aucs = []
    for r in range(repeats):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        folds = StratifiedKFold(5, shuffle=True, random_state=r)
        scores = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
        aucs.append(roc_auc(labels, scores))
    return float(np.mean(aucs)), float(np.std(aucs))


def hard_images(predictions: dict[tuple[str, int], list[pd.DataFrame]], patch_labels: pd.DataFrame,
                blue: pd.Series, n_labelled: int) -> pd.DataFrame:
    """:func:`~retinassl.metrics.anatomy.diseased_image_table` (the most missed first) with each
    image's lesion-patch count and mean blue level."""
    table = diseased_image_table(predictions, patch_labels, n_labelled)
    table.insert(0, "mean blue", blue.loc[table.index])
    table.insert(0, "lesion patches", patch_labels.set_index("id").loc[table.index].sum(axis=1))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", default="ssl_gan_errors")
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    raw = config_data(args.run / "config.yaml")  # an archived run's data paths: under $RETINASSL_DATA_ROOT
    config = validate(SSLGANExperimentConfig, raw, origin=str(args.run / "config.yaml"))
    data = load_patch_data(config.data, config.preprocess, config.split, config.patches)
    labels_file = args.run / TEST_PATCH_LABELS
    patch_labels = (pd.read_csv(labels_file) if labels_file.is_file() else
                    test_patch_labels(data, min(learner.patch_size for learner in config.learners.values())))
    predictions = read_predictions(args.run / "predictions" / PREDICTIONS, raw)
    means = anatomy_table(predictions, patch_labels, args.draws)
    means = means.sort_values(["method", "n_labelled"])
    n_test, n_test_dr = len(data.test), int(data.labels(data.test).sum())

    labels = data.labels(np.arange(len(data.prepared)))
    feature_auc, feature_sd = global_feature_auc(global_features(data.prepared), labels)

    columns = list(ANATOMY_METRICS)
    lines = ["| learner | labelled | cells | " + " | ".join(ANATOMY_TITLES[c] for c in columns) + " |",
             "|---" * (3 + len(columns)) + "|"]
    for r in means.itertuples():
        values = " | ".join(f"{getattr(r, c):.3f}" for c in columns)
        lines.append(f"| {r.method} | {r.n_labelled} | {r.cells} | {values} |")
    note = (f"\n\nRun: `{args.run}`; {n_test} test images ({n_test_dr} DR), "
            f"64 patches each; means over the planned cells' samplings; independent patch errors: "
            f"{args.draws} redraws per cell.\n\nGlobal image statistics alone (in-FOV channel means and "
            f"sds, maximum, FOV share; logistic regression, stratified 5-fold CV x 10, all "
            f"{len(labels)} images): DR vs healthy AUC {feature_auc:.3f} ± {feature_sd:.3f}.")
    largest = max(n for _, n in predictions)
    blue = pd.Series([entry.stats["mean"][-1] for entry in data.prepared.entries],
                     index=data.ids(np.arange(len(data.prepared))))
    hard = hard_images(predictions, patch_labels, blue, largest)
    beaten_columns = [c for c in hard.columns if c.endswith("at or above")]
    rho = {c.split(":")[0]: float(spearmanr(hard["mean blue"], hard[c]).statistic) for c in beaten_columns}
    hard_lines = ["| DR test image | " + " | ".join(hard.columns) + " |", "|---" * (1 + len(hard.columns)) + "|"]
    for image, r in hard.iterrows():
        hard_lines.append(f"| {image} | {int(r.iloc[0])} | {r.iloc[1]:.1f} | "
                          + " | ".join(f"{v:.2f}" for v in r.iloc[2:]) + " |")
    hard_note = (f"\n\n## The DR test images, at {largest} labels\n\nPer DR test image and learner (means over "
                 "samplings): the share of the healthy test images whose image score is at or above its "
                 "score, and the AUC of its lesion patches against all healthy images' patches (0.5: its "
                 "lesions look healthy to the learner). Mean blue: the image's in-FOV mean of the blue "
                 "channel (0-255) after preprocessing. Spearman correlation of mean blue with the share of "
                 "healthy images at or above: " + ", ".join(f"{k} {v:+.2f}" for k, v in rho.items())
                 + ".\n\n" + "\n".join(hard_lines))
    write_results(args.name, {"run": str(args.run), "draws": args.draws, "means": means.to_dict("records"),
                              "global_feature_auc": {"mean": feature_auc, "sd": feature_sd},
                              "dr_test_images": hard.reset_index(names="id").to_dict("records"),
                              "blue_spearman": rho},
                  "\n".join(lines) + note + hard_note)


if __name__ == "__main__":
    main()

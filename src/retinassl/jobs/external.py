"""External validation (``retinassl evaluate external``): the metrics of saved models on a labelled
dataset they never saw, as papers in the field report them (Jang et al. 2024 validate on JSIEC and
RFMiD; Lecouat et al. 2018 test their IDRiD model on Kaggle/EyePACS).

Per model: AUC with its DeLong 95 % interval and a bootstrap interval over images, sensitivity and
specificity at the model's own operating threshold (chosen on its validation images when it was
trained), the expected calibration error of probability outputs, and the positive rate and mean
score per value of the original label (e.g. per DR grade). Two or more models on the same images get
a paired DeLong test against the first. Predictions go to ``predictions/external-<name>-<model>.csv``
(``id, label, score``), rows to the run's results table, and the HTML report shows the ROC curves,
the reliability diagram of the probability outputs (``report/figures/reliability-<name>.png``) and,
given a ``gallery`` (:func:`retinassl.explain.overlays.misses_gallery`, wired by the command line:
jobs sit below ``explain/``), the Grad-CAM or patch heatmaps of each model's worst misses
(``report/figures/misses-<name>-<model>.png`` and the picks as ``.csv`` beside it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.atomic import write_text
from retinassl.data.cache import PreparedData
from retinassl.data.manifest import Manifest
from retinassl.errors import ConfigError
from retinassl.figures.plots import reliability_figure
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.jobs.predict import ImageScorer, label_column, mapped_labels, model_preprocess, prepare_matched
from retinassl.metrics.classification import expected_calibration_error, roc_auc
from retinassl.metrics.stats import bootstrap_ci, delong_ci, delong_test
from retinassl.models.initialize import init_label

log = logging.getLogger(__name__)

# (scorer, prepared, labels, scores, path, n, title, scored table) -> the picks (``id, label, score,
# miss, rank``); the scored table (ImageScorer.score's, row for row) spares scoring the misses again
Gallery = Callable[[ImageScorer, PreparedData, np.ndarray, np.ndarray, Path, int, str, pd.DataFrame], pd.DataFrame]


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None, probabilities: bool,
                   n_boot: int, seed: int) -> dict[str, float]:
    """AUC [DeLong and bootstrap 95 % intervals], operating-point rates and calibration."""
    auc = roc_auc(labels, scores)
    lo, hi = delong_ci(labels, scores)
    b_lo, b_hi = bootstrap_ci(labels, scores, n_boot=n_boot, seed=seed)
    out = {"auc": auc, "auc_lo": max(0.0, lo), "auc_hi": min(1.0, hi), "auc_boot_lo": b_lo, "auc_boot_hi": b_hi,
           "n": float(len(labels)), "n_positive": float(labels.sum()), "prevalence": float(labels.mean())}
    if threshold is not None:
        predicted = scores >= threshold
        pos, neg = labels == 1, labels == 0
        out["threshold"] = float(threshold)
        out["sensitivity"] = float(predicted[pos].mean()) if pos.any() else math.nan
        out["specificity"] = float((~predicted[neg]).mean()) if neg.any() else math.nan
    if probabilities:
        out["ece"] = expected_calibration_error(labels, scores)
    return out


def evaluate_external(models: Sequence[str | Path], manifest: Manifest, label: str, run: RunDir, *,
                      name: str, cache_dir: str | Path | None = None, skip_bad: bool = False,
                      breakdown: str | None = None, n_boot: int = 1000, seed: int = 0,
                      gallery: Gallery | None = None, misses: int = 4, match_scale: bool = True) -> pd.DataFrame:
    """Evaluate every model on the labelled rows of ``manifest`` (see the module docstring);
    returns the rows appended to the results table.

    Args:
        label: the binary label in the dataset's terms (:func:`~retinassl.jobs.predict.mapped_labels`).
        breakdown: a column whose values get their own positive rate and mean score (default: the
            label mapping's column).
        gallery: draws each model's ``misses`` worst false positives and false negatives.
        match_scale: rescale the images to each model's training field-of-view diameter
            (:func:`~retinassl.jobs.predict.prepare_matched`).
    """
    labels_all, has = mapped_labels(manifest, label)
    if has.sum() == 0 or len(np.unique(labels_all[has])) < 2:
        raise ConfigError(f"label mapping {label!r} leaves {int(has.sum())} labelled images with "
                          f"{len(np.unique(labels_all[has]))} class(es): an AUC needs both")
    labelled = manifest.subset(has)
    labels_of = dict(zip(manifest.frame["id"].astype(str), labels_all))
    column = breakdown or label_column(label)
    rows: list[dict] = []
    scored: dict[str, pd.DataFrame] = {}
    probabilities: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    figures = run.report_dir / "figures"
    for k, model in enumerate(models):
        scorer = ImageScorer.load(model)
        model_name = init_label(str(model))
        if model_name in scored:  # two folders of the same name
            model_name = f"{model_name}-{k + 1}"
        prepared = prepare_matched(labelled, model_preprocess(scorer.meta), scorer.meta, cache_dir, skip_bad,
                                   match_scale)
        scores, columns = scorer.score(prepared, np.arange(len(prepared)))
        if scores.ndim != 1:
            raise ConfigError(f"{model}: external validation needs a binary score; this model gives "
                              f"{scores.shape[1]} per image")
        frame = prepared.manifest.frame
        ids = frame["id"].astype(str).to_numpy()
        y = np.array([labels_of[i] for i in ids], dtype=int)
        table = pd.DataFrame({"id": ids, "label": y, "score": scores})
        if column in frame.columns:
            table[column] = frame[column].to_numpy()
        write_text(run.predictions / f"external-{name}-{model_name}.csv", table.to_csv(index=False))
        scored[model_name] = table
        metrics = binary_metrics(y, scores, scorer.threshold, scorer.kind == "classifier", n_boot, seed)
        if scorer.kind == "classifier":
            probabilities[model_name] = (y, scores)
        if gallery is not None and misses > 0:
            picks = gallery(scorer, prepared, y, scores, figures / f"misses-{name}-{model_name}.png", misses,
                            f"{model_name} on {name}", columns)
            write_text(figures / f"misses-{name}-{model_name}.csv", picks.to_csv(index=False))
        if prepared.skipped:
            metrics["skipped"] = float(len(prepared.skipped))
        if column in table.columns:
            for value, group in table.groupby(column, sort=True):
                key = f"{column}={value}"
                metrics[f"mean_score[{key}]"] = float(group["score"].mean())
                metrics[f"n[{key}]"] = float(len(group))
                if scorer.threshold is not None:
                    metrics[f"positive_rate[{key}]"] = float((group["score"] >= scorer.threshold).mean())
        rows += [result_row(experiment=f"external:{name}", task=label, method=scorer.kind, init=model_name,
                            protocol="external", n_labelled=len(y), seed=seed, metric=k, value=v)
                 for k, v in metrics.items()]
        log.info("%s on %s (%s): AUC %.3f [%.3f, %.3f], %d images%s", model_name, name, label, metrics["auc"],
                 metrics["auc_lo"], metrics["auc_hi"], len(y),
                 "" if scorer.threshold is None else
                 f", sensitivity {metrics['sensitivity']:.3f} specificity {metrics['specificity']:.3f} at "
                 f"{scorer.threshold:.3g}")
    if probabilities:
        reliability_figure(probabilities, figures / f"reliability-{name}.png", title=f"Reliability on {name}")
    names = list(scored)
    for other in names[1:]:
        a, b = scored[names[0]], scored[other]
        common = a.merge(b, on=["id", "label"], suffixes=("_a", "_b"))
        test = delong_test(common["label"].to_numpy(), common["score_a"].to_numpy(), common["score_b"].to_numpy())
        for metric, value in (("delong_p", test.p_value), ("delong_z", test.z), ("auc_difference", test.difference)):
            rows.append(result_row(experiment=f"external:{name}", task=label, method=f"{names[0]} vs {other}",
                                   init=names[0], protocol="comparison", n_labelled=len(common), seed=seed,
                                   metric=metric, value=value))
        log.info("paired DeLong %s vs %s: AUC difference %+.3f, p = %.3g", names[0], other,
                 test.difference, test.p_value)
    append_results(run.results_file, rows)
    return pd.DataFrame(rows)

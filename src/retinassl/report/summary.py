"""The summary that opens every report, like the first paragraph of a paper's results section: what
ran on which data, the headline numbers with their 95 % intervals, and one sentence per comparison.

Derived only from the run's results table, its comparison table (``comparison.csv``, itself written
from the results and prediction files) and its prediction files; never from the configuration.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.metrics.classification import roc_auc
from retinassl.metrics.intervals import METHOD, METHOD_SENTENCE, seed_image_bootstrap
from retinassl.report.sections import Section, number, table_html
from retinassl.report.tables import PROTOCOLS, intervals_of, metric_groups, percent, with_interval

SHOWN_SENTENCES = 8
HEADLINE_METRICS = 4
METRIC_NAMES = {"auc": "AUC", "auc_bin": "AUC", "auc_macro": "macro AUC", "kappa": "kappa", "dice": "Dice",
                "image_auc": "image AUC", "patch_auc": "patch AUC"}
NOT_DATA_TASKS = {"pretrain", "features"}


def _names(values) -> str:
    return ", ".join(html.escape(str(v)) for v in dict.fromkeys(values) if str(v))


def _dataset(task: str, experiment: str) -> str:
    """The dataset a row was scored on, as the jobs name it in the task or the experiment."""
    if experiment.startswith("external:"):
        return experiment.removeprefix("external:")
    if "@" in task:
        return task.split("@", 1)[1]
    return task.split(":", 1)[1] if task.startswith("vessels:") else ""


def what_ran(results: pd.DataFrame) -> list[str]:
    """One line per experiment: its tasks, datasets, methods or initialisations, protocols, label
    fractions, seeds and test images."""
    lines = []
    for experiment, block in results.groupby("experiment", sort=False):
        scored = block[~block["task"].isin(NOT_DATA_TASKS) & (block["protocol"] != "comparison")]
        if scored.empty:
            scored = block
        parts = [f"tasks {_names(scored['task'])}"]
        datasets = _names(_dataset(t, str(experiment)) for t in scored["task"])
        if datasets:
            parts.append(f"scored on {datasets}")
        external = str(experiment).startswith("external:")
        if external:  # evaluate external: the saved models under their names
            parts.append(f"models {_names(scored['init'])}")
        elif (scored["protocol"] == "probe").any():  # a transfer sweep: what varies is the initialisation
            parts.append(f"initialisations {_names(scored['init'])}")
        else:
            inits = [i for i in scored["init"] if i not in ("", "scratch")]
            parts.append(f"methods {_names(scored['method'])}"
                         + (f" (initialised from {_names(inits)})" if inits else ""))
        protocols = [PROTOCOLS.get(p, p) for p in scored["protocol"] if p]
        if protocols and not external:
            parts.append(f"protocols {_names(protocols)}")
        fractions = sorted(set(scored["fraction"].dropna().astype(float)))
        if fractions and fractions != [1.0]:
            parts.append("labelled fractions " + ", ".join(percent(f) for f in fractions))
        seeds = scored["seed"].dropna().nunique()
        if seeds:
            parts.append(f"{seeds} seed{'s' if seeds > 1 else ''}")
        tests = scored.loc[scored["metric"].isin(["n_test", "n_images", "n"]), "value"]
        if not tests.empty:
            parts.append(f"{int(tests.max())} test images")
        lines.append(f"<b>{html.escape(str(experiment) or 'run')}</b>: " + "; ".join(parts) + ".")
    return lines


def transfer_headline(comparison: pd.DataFrame) -> pd.DataFrame:
    """The headline metric of each task (the comparison table lists it first) per protocol and
    initialisation, at each protocol's lowest and highest label fraction (a protocol run at one
    fraction only, such as the demo's fine-tuning at 10 %, gets its own column), as ``mean [lo, hi]``."""
    rows = []
    for task, block in comparison.groupby("task", sort=False):
        metric = block["metric"].iloc[0]
        block = block[block["metric"] == metric]
        fractions = block.groupby("protocol")["fraction"]
        ends = sorted(set(fractions.min()) | set(fractions.max()))
        for (protocol, init), cells in block.groupby(["protocol", "init"], sort=False):
            row = {"task": task, "metric": METRIC_NAMES.get(metric, metric),
                   "protocol": PROTOCOLS.get(protocol, protocol), "initialisation": init}
            for f in ends:
                cell = cells[cells["fraction"] == f]
                row[f"{percent(f)} of labels"] = ("" if cell.empty else
                                                  with_interval(*cell[["mean", "lo", "hi"]].iloc[0].astype(float)))
            rows.append(row)
    return pd.DataFrame(rows).fillna("")


def interval_headline(results: pd.DataFrame) -> pd.DataFrame:
    """The first :data:`HEADLINE_METRICS` metrics whose rows carry a 95 % interval (vessel
    segmentation, external validation), per group at its largest label fraction, as ``value [lo, hi]`` (mean ± sd over several seeds)."""
    with_bounds = set(intervals_of(set(results["metric"])))
    groups = metric_groups(results)
    first = list(dict.fromkeys(m for m in groups["metric"] if m in with_bounds))[:HEADLINE_METRICS]
    groups = groups[groups["metric"].isin(first)]
    if groups.empty:
        return pd.DataFrame()
    keys = ["experiment", "task", "method", "init", "protocol"]
    largest = groups.groupby(keys, sort=False, dropna=False)["fraction"].transform("max")
    groups = groups[(groups["fraction"] == largest) | largest.isna()]
    rows = []
    for key, block in groups.groupby(keys, sort=False, dropna=False):
        row = {"task": key[1], "method": key[2] if key[3] in ("scratch", "") else f"{key[2]} ({key[3]})"}
        for r in block.itertuples():
            text = (with_interval(r.mean, r.lo, r.hi) if math.isfinite(r.lo)
                    else f"{number(r.mean)} ± {number(r.sd)} ({r.n_seeds} seeds)" if math.isfinite(r.sd)
                    else number(r.mean))
            row[METRIC_NAMES.get(r.metric, r.metric)] = text
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def prediction_headline(folder: Path, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """AUC with a 95 % percentile bootstrap interval over the test images (resampled within each
    class) of every binary prediction file directly under ``predictions/`` (columns ``label`` and
    ``score``)."""
    rows = []
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        frame = pd.read_csv(path)
        if not {"label", "score"} <= set(frame.columns) or frame["label"].nunique() != 2:
            continue
        labels, scores = frame["label"].to_numpy(int), frame["score"].to_numpy(float)
        lo, hi = seed_image_bootstrap(labels, scores[None], "auc", n_boot=n_boot, seed=seed)
        rows.append({"predictions": path.stem, "test images": len(labels), "positive": int(labels.sum()),
                     "AUC [95 % interval]": with_interval(roc_auc(labels, scores), lo, hi)})
    return pd.DataFrame(rows)


def seed_ensemble_headline(folder: Path, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Image-level AUC per learner and number of labelled images from the SSL-GAN experiment's
    prediction files (``predictions/ssl-gan/<learner>-n<N>-s<seed>.csv``): the mean over seeds with
    the 95 % bootstrap interval over seeds and test images of
    :func:`~retinassl.metrics.intervals.seed_image_bootstrap`."""
    from retinassl.report.ssl_gan import read_predictions

    cells = read_predictions(folder) if folder.is_dir() else {}
    rows: dict[str, dict[str, str]] = {}
    for (learner, n), frames in sorted(cells.items(), key=lambda kv: kv[0][1]):
        ids = frames[0]["id"].astype(str).tolist()
        aligned = [f.set_index(f["id"].astype(str)).loc[ids] for f in frames]
        labels = aligned[0]["label"].to_numpy(int)
        if len(np.unique(labels)) < 2:
            continue
        scores = np.stack([f["score"].to_numpy(float) for f in aligned])
        mean = float(np.mean([roc_auc(labels, s) for s in scores]))
        lo, hi = seed_image_bootstrap(labels, scores, "auc", n_boot=n_boot, seed=seed)
        rows.setdefault(learner, {"learner": learner})[f"{n} labelled ({len(frames)} seed{'s' if len(frames) > 1 else ''})"] = with_interval(mean, lo, hi)
    return pd.DataFrame(list(rows.values())).fillna("")


def _interval_kinds(results: pd.DataFrame) -> str:
    """How the jobs computed the intervals they recorded, by the names of the bounds."""
    names = set(results["metric"])
    kinds = []
    if any(m.endswith("_ci_low") for m in names):
        kinds.append("percentile bootstrap over test images")
    if any(m.endswith("_lo") for m in names) and any(m.startswith("external:") for m in results["experiment"]):
        kinds.append("DeLong's for external validation")
    return "; ".join(kinds) or "as recorded"


def _p_text(p: float) -> str:
    return "p &lt; 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def transfer_sentences(comparison: pd.DataFrame) -> list[str]:
    """One sentence per (task, protocol, label fraction, initialisation) tested against the reference,
    e.g. ``rotation beats scratch at 5 % labels (referable, linear probe): +0.070 AUC (0.812 [0.75,
    0.87] vs 0.742), DeLong p = 0.003, significantly higher in 4 of 5 seeds.``"""
    tested = comparison[np.isfinite(comparison["p"].to_numpy(float))]
    ensemble = comparison.set_index(["task", "protocol", "fraction", "init", "metric"])["auc_ensemble"]
    sentences = []
    for r in tested.itertuples():
        ref_ensemble = ensemble.get((r.task, r.protocol, r.fraction, r.reference, r.metric), math.nan)
        tested_difference = r.auc_ensemble - ref_ensemble
        if r.p < 0.05 and r.delta > 0 and tested_difference > 0:
            verb = "beats"
        elif r.p < 0.05 and r.delta < 0 and tested_difference < 0:
            verb = "falls below"
        else:
            verb = "does not differ significantly from" if r.p >= 0.05 else "differs from"
        where = "with all labels" if r.fraction >= 1 else f"at {percent(r.fraction)} labels"
        seeds = f"significantly higher in {int(r.sig_better)} of {int(r.n_seeds)} seed{'s' if r.n_seeds > 1 else ''}"
        if r.sig_worse:
            seeds += f", lower in {int(r.sig_worse)}"
        sentences.append(
            f"<b>{html.escape(r.init)}</b> {verb} <b>{html.escape(r.reference)}</b> {where} "
            f"({html.escape(r.task)}, {PROTOCOLS.get(r.protocol, r.protocol)}): {r.delta:+.3f} "
            f"{METRIC_NAMES.get(r.metric, r.metric)} ({with_interval(r.mean, r.lo, r.hi)} vs "
            f"{number(r.reference_mean)}), DeLong {_p_text(r.p)}, {seeds}.")
    return sentences


def paired_sentences(results: pd.DataFrame) -> list[str]:
    """One sentence per paired DeLong comparison the results table records (rows of protocol
    ``comparison``: external validation of several models, the SSL-GAN against its baselines)."""
    rows = results[results["protocol"] == "comparison"]
    sentences = []
    for (experiment, task, pair, n), block in rows.groupby(["experiment", "task", "method", "n_labelled"],
                                                           sort=False, dropna=False):
        p = block.loc[block["metric"] == "delong_p"].set_index("seed")["value"]
        difference = block.loc[block["metric"] == "auc_difference"].set_index("seed")["value"]
        if p.empty:
            continue
        if experiment.startswith("external:"):
            where = f"on {html.escape(experiment.removeprefix('external:'))} ({html.escape(task)}, {int(n)} images)"
        else:
            where = (f"with {int(n)} labelled images " if math.isfinite(n) else "") + f"({html.escape(task)})"
        text = (f"<b>{html.escape(pair)}</b> {where}: AUC difference {difference.mean():+.3f}"
                + _pair_means(results, experiment, pair, n))
        if not np.isfinite(p.to_numpy(float)).any():
            text += ", DeLong p undefined (the two score sets rank the images alike)."
        elif len(p) == 1:
            text += f", DeLong {_p_text(float(p.iloc[0]))}."
        else:
            significant = p < 0.05
            higher = int((significant & (difference.reindex(p.index) > 0)).sum())
            text += (f" (mean over {len(p)} seeds), DeLong p &lt; 0.05 in {int(significant.sum())} of "
                     f"{len(p)} seeds ({higher} higher; median {_p_text(float(p.median()))}).")
        sentences.append(text)
    return sentences


def _pair_means(results: pd.DataFrame, experiment: str, pair: str, n: float) -> str:
    """`` (0.812 vs 0.774 image AUC)``: the mean over seeds of each side of an ``a vs b``
    comparison (the SSL-GAN sweep's cells), when the results table has both; else ``""``."""
    sides = str(pair).split(" vs ")
    rows = results[(results["experiment"] == experiment) & (results["metric"] == "image_auc")
                   & (results["n_labelled"] == n)]
    means = [float(rows.loc[rows["method"] == side, "value"].mean()) for side in sides]
    if len(sides) != 2 or not np.isfinite(means).all():
        return ""
    return f" ({means[0]:.3f} vs {means[1]:.3f} image AUC)"


def _comparison(run: RunDir) -> pd.DataFrame | None:
    path = run.path / "comparison.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    return None if table.empty or "reference" not in table.columns else table


def summary_section(run: RunDir) -> Section | None:
    """The report's opening block (None when the run has no results yet)."""
    if not run.results_file.is_file():
        return None
    results = read_results(run.results_file)
    comparison = _comparison(run)
    parts = ['<ul class="ran">' + "".join(f"<li>{line}</li>" for line in what_ran(results)) + "</ul>"]
    status = run.status().get("status", "")
    if status and status != "finished":
        parts.append(f'<p class="warn">The run is {html.escape(status)}: these numbers are partial.</p>')
    headlines = []
    if comparison is not None:
        methods = set(comparison["interval"].dropna().astype(str)) if "interval" in comparison.columns else set()
        how = METHOD_SENTENCE if methods == {METHOD} else "95 % intervals: " + (", ".join(sorted(methods)) or "none")
        headlines.append(table_html(transfer_headline(comparison), text_columns=("task", "metric", "protocol",
                                                                                 "initialisation"))
                         + f'<p class="note">Mean over seeds [{html.escape(how)}].</p>')
    recorded = interval_headline(results)
    if not recorded.empty:
        headlines.append(table_html(recorded, text_columns=tuple(recorded.columns))
                         + f'<p class="note">Value [95 % interval the job recorded: {_interval_kinds(results)}].</p>')
    ensembles = seed_ensemble_headline(run.path / "predictions" / "ssl-gan")
    if not ensembles.empty:
        headlines.append(table_html(ensembles, text_columns=("learner",))
                         + f'<p class="note">Image-level test AUC, mean over seeds [{html.escape(METHOD_SENTENCE)}; '
                           "1,000 replicates here].</p>")
    predicted = prediction_headline(run.path / "predictions") if recorded.empty else pd.DataFrame()
    if not predicted.empty:
        headlines.append(table_html(predicted, text_columns=("predictions", "AUC [95 % interval]"))
                         + '<p class="note">AUC of each prediction file in <code>predictions/</code> '
                           "[95 % percentile bootstrap over its test images, resampled within each "
                           "class, 1,000 replicates].</p>")
    if headlines:
        parts.append("<h3>Headline numbers</h3>" + "".join(headlines))
    sentences = (transfer_sentences(comparison) if comparison is not None else []) + paired_sentences(results)
    if sentences:
        shown = "".join(f"<li>{s}</li>" for s in sentences[:SHOWN_SENTENCES])
        rest = "".join(f"<li>{s}</li>" for s in sentences[SHOWN_SENTENCES:])
        parts.append("<h3>Comparisons</h3><ul class=\"sentences\">" + shown + "</ul>"
                     + (f"<details><summary>{len(sentences) - SHOWN_SENTENCES} more comparisons</summary>"
                        f"<ul class=\"sentences\">{rest}</ul></details>" if rest else ""))
    return Section("Summary", "".join(parts))

"""The metric tables of a report, from the results table alone: which metrics matter (quality
metrics, with their 95 % intervals where the results carry them) and which are bookkeeping (counts,
timings, chosen hyper-parameters), rounding, the wide table of the metrics that matter, and the full
raw table that closes the page (collapsed, with a link to the CSV file in the run directory)."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd

from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.report.sections import number, table_html

# counts, timings, steps, chosen hyper-parameters and the validation pass a training kept
# (selected_epoch, selected_val_*): in the raw table only
BOOKKEEPING = re.compile(r"^(n|n_.*|n\[.*\]|.*seconds.*|.*_batches|.*_steps|steps|C|best_epoch|val_size|"
                         r"feature_dim|extracted_images|pool_size|skipped|delong_z|.*_per_image|selected_.*|selection_.*|selected)$")
# the bounds of a metric's 95 % interval, as the jobs name them (vessels: _ci_low/_ci_high, external: _lo/_hi)
BOUNDS = (("_ci_low", "_ci_high"), ("_lo", "_hi"))
_BOUND = re.compile(r"_(ci_low|ci_high|lo|hi)$")
KEYS = ["experiment", "task", "method", "init", "protocol", "fraction"]
PROTOCOLS = {"probe": "linear probe", "finetune": "fine-tuning"}
RAW_ROWS = 2000


def percent(fraction: float) -> str:
    """``0.05 -> '5 %'``, ``0.10416666 -> '10.4 %'``."""
    return f"{float(fraction) * 100:.3g} %"


def with_interval(value: float, lo: float, hi: float) -> str:
    """``0.812 [0.750, 0.871]`` (no brackets without a finite interval)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return number(value)
    return f"{number(value)} [{number(lo)}, {number(hi)}]"


def intervals_of(metrics: set[str]) -> dict[str, tuple[str, str]]:
    """``metric -> (low bound's name, high bound's name)`` for each metric whose rows come with a 95 %
    interval."""
    return {m: (m + lo, m + hi) for m in metrics for lo, hi in BOUNDS if m + lo in metrics and m + hi in metrics}


def metrics_that_matter(metrics: list[str]) -> list[str]:
    """The quality metrics among ``metrics`` (in order): not bookkeeping, not an interval bound."""
    present = set(metrics)
    bounds = {b for pair in intervals_of(present).values() for b in pair}
    return [m for m in dict.fromkeys(metrics)
            if not BOOKKEEPING.match(m) and m not in bounds and not _BOUND.search(m)]


def metric_groups(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, task, method, init, protocol, fraction, metric) of the metrics that
    matter: ``mean`` and ``sd`` over seeds (a seed's value is the mean over its folds), ``n_seeds``,
    and ``lo``/``hi``, the recorded 95 % interval when there is exactly one seed (NaN otherwise: the
    per-seed intervals of several seeds are not an interval of their mean)."""
    frame = results[results["protocol"] != "comparison"].copy()
    frame["fraction"] = frame["fraction"].astype(float).fillna(-1.0)  # NaN keys never match a lookup
    keep = metrics_that_matter(frame["metric"].tolist())
    bounds = intervals_of(set(frame["metric"]))
    seed_key = KEYS + ["seed"]
    per_seed = (frame.assign(seed=frame["seed"].fillna(-1))
                .groupby(seed_key + ["metric"], sort=False, dropna=False)["value"].mean())
    rows = []
    order = {m: n for n, m in enumerate(keep)}
    wanted = frame[frame["metric"].isin(keep)]
    for key, group in wanted.assign(seed=wanted["seed"].fillna(-1)).groupby(KEYS + ["metric"], sort=False,
                                                                            dropna=False):
        values = group.groupby("seed")["value"].mean().to_numpy(float)
        row = dict(zip(KEYS + ["metric"], key))
        row.update(mean=float(np.nanmean(values)) if np.isfinite(values).any() else math.nan,
                   sd=float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else math.nan,
                   n_seeds=len(values), lo=math.nan, hi=math.nan)
        if len(values) == 1 and row["metric"] in bounds:
            seed = group["seed"].iloc[0]
            for side, name in zip(("lo", "hi"), bounds[row["metric"]]):
                found = per_seed.get((*key[:-1], seed, name), math.nan)
                row[side] = float(found)
        rows.append(row)
    table = pd.DataFrame(rows, columns=KEYS + ["metric", "mean", "sd", "n_seeds", "lo", "hi"])
    table["fraction"] = table["fraction"].astype(float).where(table["fraction"] >= 0)
    return table.sort_values("metric", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def cell_text(row: pd.Series) -> str:
    """``mean [lo, hi]`` with one seed and an interval, ``mean ± sd`` over several seeds."""
    if math.isfinite(row["lo"]):
        return with_interval(row["mean"], row["lo"], row["hi"])
    if math.isfinite(row["sd"]):
        return f"{number(row['mean'])} ± {number(row['sd'])}"
    return number(row["mean"])


def wide_metrics(results: pd.DataFrame) -> pd.DataFrame:
    """The metrics that matter as one row per (experiment, task, method, init, protocol, label
    fraction) and one column per metric; text columns that say nothing (all empty) dropped."""
    groups = metric_groups(results)
    if groups.empty:
        return pd.DataFrame()
    groups["text"] = groups.apply(cell_text, axis=1)
    groups["labelled"] = groups["fraction"].map(lambda f: percent(f) if math.isfinite(f) else "")
    groups["protocol"] = groups["protocol"].map(lambda p: PROTOCOLS.get(p, p))
    keys = ["experiment", "task", "method", "init", "protocol", "labelled"]
    metrics = list(dict.fromkeys(groups["metric"]))
    seeds = groups.groupby(keys, sort=False)["n_seeds"].max().rename("seeds")
    wide = groups.pivot_table(index=keys, columns="metric", values="text", aggfunc="first", sort=False)
    wide = wide.reindex(columns=metrics).join(seeds).reset_index().fillna("")
    if wide["experiment"].nunique() == 1:
        wide = wide.drop(columns="experiment")
    return wide.loc[:, [c for c in wide.columns if not (wide[c].astype(str) == "").all()]]


def transposed(wide: pd.DataFrame, text: tuple[str, ...]) -> pd.DataFrame:
    """``wide`` with one row per metric and one column per group (for a few groups and many
    metrics); a group's column name joins its text fields that differ between groups."""
    varying = [c for c in text if wide[c].nunique() > 1] or list(text[:1])
    names = [" · ".join(str(row[c]) for c in varying if str(row[c])) for _, row in wide.iterrows()]
    values = wide.drop(columns=list(text)).T
    values.columns = names
    return values.rename_axis("metric").reset_index()


def metrics_table_html(run: RunDir) -> str:
    """The tables of the metrics that matter, one per experiment ("" when the run has no results)."""
    if not run.results_file.is_file():
        return ""
    results = read_results(run.results_file)
    parts = []
    experiments = list(dict.fromkeys(results["experiment"]))
    for experiment in experiments:
        wide = wide_metrics(results[results["experiment"] == experiment])
        if wide.empty:
            continue
        text = tuple(c for c in wide.columns if c in ("task", "method", "init", "protocol", "labelled"))
        if len(wide) < len(wide.columns) - len(text) - 1:  # more metrics than groups: metrics in rows
            wide, text = transposed(wide, text), ("metric",)
        title = f"<h3>{html.escape(experiment)}</h3>" if len(experiments) > 1 else ""
        parts.append(title + f'<div class="scroll">{table_html(wide, text_columns=text)}</div>')
    if not parts:
        return ""
    return ('<p class="note">Mean over seeds (± sd with several seeds); with one seed, the 95 % interval the '
            "job recorded in brackets. Counts, timings and chosen hyper-parameters are in the full table "
            "at the end.</p>" + "".join(parts))


def raw_results_html(run: RunDir) -> str:
    """The full results table, collapsed, with links to the CSV files in the run directory."""
    if not run.results_file.is_file():
        return ""
    results = pd.read_csv(run.results_file, dtype=str, keep_default_na=False)
    links = [f'<a href="../{name}" download>{name}</a>' for name in ("results.csv", "comparison.csv")
             if (run.path / name).is_file()]
    shown = results.head(RAW_ROWS)
    more = f" (the first {RAW_ROWS} rows; the CSV has all)" if len(results) > RAW_ROWS else ""
    empty = [c for c in shown.columns if (shown[c] == "").all()]
    return (f'<details class="raw"><summary>Full results table: {len(results)} rows{more} '
            f'&middot; download {" &middot; ".join(links)}</summary>'
            + table_html(shown.drop(columns=empty), text_columns=tuple(shown.columns), cls="raw")
            + "</details>")

"""Comparison tables of a transfer sweep, computed only from its results table and prediction files.

For every (task, protocol, label fraction, initialisation):

- the headline metric (``auc``, ``kappa`` or ``auc_macro``) as the mean over seeds (with k-fold the
  metric of a seed is the mean over its folds) with a 95 % interval from the two-level percentile
  bootstrap over seeds and test images of :mod:`~retinassl.metrics.intervals` (the same method for
  every cell, whatever the number of seeds; recomputed from the prediction files; the ``interval``
  column names it, and :data:`~retinassl.metrics.intervals.METHOD_SENTENCE` says it in words);
- DeLong's paired test against the reference initialisation (Scratch) on the same test images,
  for tasks with a binary score (``binary``, and ``multiclass`` with ``positive_from``):
  ``p`` compares the two *seed ensembles* (each image's score averaged over seeds, out-of-fold
  predictions pooled with k-fold), a valid single test per cell; ``p_seeds`` is the median of the
  per-seed p-values, ``sig_seeds`` how many seeds reach p < 0.05 and, of those, ``sig_better`` and
  ``sig_worse`` how many have a higher and a lower AUC than the reference (the tests are two-sided;
  the per-seed tests share the test images, so they are not independent and are not combined into
  one p-value).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import write_text
from retinassl.errors import DataError
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.metrics.classification import roc_auc
from retinassl.metrics.intervals import FAST_METRICS, METHOD, METHOD_SENTENCE, seed_image_bootstrap
from retinassl.metrics.stats import delong_test, significant_by_sign, signed_count
from retinassl.metrics.tasks import TaskSpec

log = logging.getLogger(__name__)

_CELL_FILE = re.compile(r"^f(?P<fraction>[0-9.e+-]+)-s(?P<seed>-?\d+)(?:-k(?P<fold>\d+))?\.csv$")
COMPARISON_COLUMNS = ("task", "protocol", "fraction", "init", "reference", "metric", "n_seeds", "mean", "lo", "hi",
                      "interval", "reference_mean", "delta", "auc_ensemble", "p", "p_seeds", "sig_seeds",
                      "sig_better", "sig_worse")
NO_TEST = {"auc_ensemble": math.nan, "p": math.nan, "p_seeds": math.nan, "sig_seeds": math.nan,
           "sig_better": math.nan, "sig_worse": math.nan}


def transfer_results(results_file: str | Path) -> pd.DataFrame:
    """The rows of a results table that belong to probe/fine-tune cells."""
    table = read_results(results_file)
    return table[table["protocol"].isin(["probe", "finetune"])].copy()


def seed_metric(results: pd.DataFrame, task: str, protocol: str, metric: str) -> pd.DataFrame:
    """Columns ``init``, ``fraction``, ``seed``, ``value``: the metric per seed (mean over folds)."""
    rows = results[(results["task"] == task) & (results["protocol"] == protocol) & (results["metric"] == metric)]
    if rows.empty:
        return pd.DataFrame(columns=["init", "fraction", "seed", "value"])
    return rows.groupby(["init", "fraction", "seed"], as_index=False)["value"].mean()


Cell = tuple[list[str], np.ndarray, np.ndarray]


def read_cell_predictions(folder: Path, task: TaskSpec) -> dict[tuple[float, int], Cell]:
    """``(fraction, seed) -> (ids, labels, scores)`` of one (task, protocol, init) folder; the folds
    of a seed are concatenated (out-of-fold predictions)."""
    return {key: cell for key, (cell, _) in _read_cells(folder, task).items()}


def _read_cells(folder: Path, task: TaskSpec) -> dict[tuple[float, int], tuple[Cell, np.ndarray]]:
    """:func:`read_cell_predictions` with each row's fold: ``(fraction, seed) -> (cell, folds)``."""
    parts: dict[tuple[float, int], list[tuple[int, list[str], np.ndarray, np.ndarray]]] = {}
    if not folder.is_dir():
        return {}
    for path in sorted(folder.glob("*.csv")):
        m = _CELL_FILE.match(path.name)
        if not m:
            continue
        ids, labels, scores = task.read_prediction(pd.read_csv(path, dtype={"id": str}))
        key = (round(float(m["fraction"]), 6), int(m["seed"]))
        parts.setdefault(key, []).append((int(m["fold"] or 0), ids, labels, scores))
    out = {}
    for key, items in parts.items():
        items.sort(key=lambda t: t[0])
        cell = ([i for t in items for i in t[1]], np.concatenate([t[2] for t in items]),
                np.concatenate([t[3] for t in items]))
        out[key] = (cell, np.concatenate([np.full(len(t[1]), t[0]) for t in items]))
    return out


def _aligned(a: tuple[list[str], np.ndarray, np.ndarray], b: tuple[list[str], np.ndarray, np.ndarray]):
    """Scores of ``b`` reordered to ``a``'s ids (None when the image sets differ)."""
    if sorted(a[0]) != sorted(b[0]):
        return None
    position = {i: n for n, i in enumerate(b[0])}
    order = np.array([position[i] for i in a[0]])
    return b[2][order]


def comparison(run_path: str | Path, tasks: list[TaskSpec], reference: str, n_boot: int = 2000,
               seed: int = 0) -> pd.DataFrame:
    """The comparison table (see the module docstring), one row per (task, protocol, fraction, init);
    ``n_boot`` bootstrap replicates per interval, drawn from ``seed``."""
    run_path = Path(run_path)
    results = transfer_results(run_path / "results.csv")
    rows: list[dict[str, Any]] = []
    for task, metric in [(t, m) for t in tasks for m in dict.fromkeys([t.primary, t.binary_metric]) if m]:
        for protocol in sorted(results.loc[results["task"] == task.name, "protocol"].unique()):
            per_seed = seed_metric(results, task.name, protocol, metric)
            base = run_path / "predictions" / "transfer" / task.name / protocol
            read = {init: _read_cells(base / init, task) for init in per_seed["init"].unique()}
            preds = {init: {key: cell for key, (cell, _) in cells.items()} for init, cells in read.items()}
            ref = preds.get(reference, {})
            ref_seed = per_seed[per_seed["init"] == reference]
            for (init, fraction), group in per_seed.groupby(["init", "fraction"], sort=False):
                values = group["value"].to_numpy(float)
                row: dict[str, Any] = {"task": task.name, "protocol": protocol, "fraction": float(fraction),
                                       "init": init, "reference": reference, "metric": metric, "n_seeds": len(values),
                                       "mean": float(np.nanmean(values)) if np.isfinite(values).any() else math.nan}
                here = {s: v for (f, s), v in read.get(init, {}).items() if f == round(float(fraction), 6)}
                cells = {s: cell for s, (cell, _) in here.items()}
                row["lo"], row["hi"] = seed_image_interval(task, metric, here, n_boot=n_boot, seed=seed)
                row["interval"] = METHOD if np.isfinite(row["lo"]) else "none (no prediction files)"
                ref_values = ref_seed[ref_seed["fraction"] == fraction]["value"].to_numpy(float)
                row["reference_mean"] = float(np.nanmean(ref_values)) if np.isfinite(ref_values).any() else math.nan
                row["delta"] = row["mean"] - row["reference_mean"]
                if metric == task.binary_metric:
                    row.update(_delong(task, cells, {s: v for (f, s), v in ref.items()
                                                     if f == round(float(fraction), 6)}, init == reference))
                else:
                    row.update(NO_TEST)
                rows.append(row)
    return _in_table_order(pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS)))


def _in_table_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by task, headline metric first, protocol, init and fraction."""
    headline = {"auc": 0, "kappa": 0, "auc_macro": 0}
    table = table.assign(order=table["metric"].map(lambda m: headline.get(m, 1)))
    table = table.sort_values(["task", "order", "metric", "protocol", "init", "fraction"], kind="stable")
    return table.drop(columns="order").reset_index(drop=True)


def seed_image_interval(task: TaskSpec, metric: str, cells: dict[int, tuple[Cell, np.ndarray]],
                        n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean over seeds of ``metric`` from the seeds' predictions ``seed ->
    ((ids, labels, scores), folds)``: :func:`~retinassl.metrics.intervals.seed_image_bootstrap` on
    the union of their test images (NaN, NaN without predictions)."""
    if not cells:
        return math.nan, math.nan
    seeds = sorted(cells)
    ids = list(dict.fromkeys(i for s in seeds for i in cells[s][0][0]))
    position = {i: n for n, i in enumerate(ids)}
    first_labels, first_scores = cells[seeds[0]][0][1], cells[seeds[0]][0][2]
    labels = np.full((len(ids), *first_labels.shape[1:]), -1, dtype=np.int64)
    scores = np.full((len(seeds), len(ids), *first_scores.shape[1:]), np.nan)
    folds = np.full((len(seeds), len(ids)), -1)
    for k, s in enumerate(seeds):
        (cell_ids, cell_labels, cell_scores), cell_folds = cells[s]
        rows = np.array([position[i] for i in cell_ids], dtype=int)
        known = (labels[rows] >= 0).reshape(len(rows), -1).all(axis=1)
        clash = known & (labels[rows] != cell_labels).reshape(len(rows), -1).any(axis=1)
        if clash.any():
            raise DataError(f"task {task.name!r}, {metric}: seed {s}'s prediction file gives {int(clash.sum())} "
                            f"test image(s) a label that another seed's file contradicts")
        labels[rows], scores[k, rows], folds[k, rows] = cell_labels, cell_scores, cell_folds
    if metric == task.binary_metric:
        pairs = [task.binary_scores(labels, scores[k]) for k in range(len(seeds))]
        labels, scores, name = pairs[0][0], np.stack([p[1] for p in pairs]), "auc"
    elif metric in FAST_METRICS:
        name = metric
    else:
        def name(y: np.ndarray, p: np.ndarray) -> float:
            return task.metrics(y, p)[metric]
    return seed_image_bootstrap(labels, scores, name, folds=folds, n_boot=n_boot, seed=seed)


def _delong(task: TaskSpec, cells: dict[int, tuple], ref_cells: dict[int, tuple], is_reference: bool) -> dict[str, float]:
    out = dict(NO_TEST)
    if task.binary_metric is None or not cells:
        return out
    seeds = sorted(set(cells) & set(ref_cells))
    ensemble, ref_ensemble, labels, tests = None, None, None, []
    for s in seeds:
        ids, lab, sco = cells[s]
        pair = task.binary_scores(lab, sco)
        ref_scores = _aligned(cells[s], ref_cells[s])
        if pair is None or ref_scores is None:
            continue
        ref_pair = task.binary_scores(lab, ref_scores)
        if len(np.unique(pair[0])) < 2:
            continue
        if not is_reference:
            tests.append(delong_test(pair[0], pair[1], ref_pair[1]))
        if ensemble is None:
            ensemble, ref_ensemble, labels, first_ids = pair[1].copy(), ref_pair[1].copy(), pair[0], ids
        else:
            order = {i: n for n, i in enumerate(ids)}
            idx = np.array([order[i] for i in first_ids])
            ensemble += pair[1][idx]
            ref_ensemble += ref_pair[1][idx]
    if ensemble is None:
        return out
    out["auc_ensemble"] = roc_auc(labels, ensemble)
    if not is_reference:
        out["p"] = delong_test(labels, ensemble, ref_ensemble).p_value
        finite = [t for t in tests if np.isfinite(t.p_value)]
        out["p_seeds"] = float(np.median([t.p_value for t in finite])) if finite else math.nan
        better, worse = significant_by_sign([t.p_value for t in finite], [t.difference for t in finite])
        out["sig_seeds"], out["sig_better"], out["sig_worse"] = float(better + worse), float(better), float(worse)
    return out


def _cell(row: pd.Series) -> str:
    if not np.isfinite(row["mean"]):
        return "n/a"
    text = f"{row['mean']:.3f}"
    if np.isfinite(row["lo"]):
        text += f" [{row['lo']:.3f}, {row['hi']:.3f}]"
    if np.isfinite(row["p"]):
        text += f" p={row['p']:.3g}" if row["p"] >= 0.001 else " p<0.001"
        if np.isfinite(row["sig_seeds"]):
            text += f" ({signed_count(row['sig_better'], row['sig_worse'], row['n_seeds'])})"
    return text


def markdown_tables(table: pd.DataFrame, inits_order: list[str] | None = None) -> str:
    """One Markdown table per (task, protocol): initialisations x fractions, ``mean [lo, hi] p=``."""
    out = []
    for (task, metric, protocol), block in table.groupby(["task", "metric", "protocol"], sort=False):
        fractions = sorted(block["fraction"].unique())
        inits = [i for i in (inits_order or []) if i in set(block["init"])] + sorted(
            set(block["init"]) - set(inits_order or []))
        header = "| init | " + " | ".join(f"{f:g}" for f in fractions) + " |"
        intervals = " / ".join(sorted(set(block["interval"].dropna())))
        tested = ("; DeLong p vs the reference on seed ensembles (seeds with p<0.05: "
                  "+higher/-lower AUC than the reference, of n seeds)") \
            if np.isfinite(block["p"].to_numpy(float)).any() else ""
        lines = [f"**{task}, {'linear probe' if protocol == 'probe' else 'fine-tuning'}** ({metric}; "
                 f"mean over seeds [95 % interval: {intervals}]{tested})", "", header,
                 "|" + "---|" * (len(fractions) + 1)]
        for init in inits:
            cells = []
            for f in fractions:
                hit = block[(block["init"] == init) & (block["fraction"] == f)]
                cells.append(_cell(hit.iloc[0]) if len(hit) else "")
            lines.append(f"| {init} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    if (table["interval"] == METHOD).any():
        out.insert(0, METHOD_SENTENCE + ".")
    return "\n\n".join(out) + "\n"


def merge_comparisons(tables: dict[str, pd.DataFrame], tolerance: float = 1e-9) -> pd.DataFrame:
    """One comparison table from the tables of several runs (``{run label: comparison table}``) that
    share their reference initialisation and downstream protocol, e.g. studies that each added
    initialisations beside the same Scratch. Each run's deltas and DeLong tests are against its own
    reference, so the merge is valid only if that reference is the same model. Checked, else a
    :class:`DataError` names the runs and the cell: every run after the first shares at least one
    reference cell with the runs before it; wherever two runs have a (task, protocol, fraction,
    metric) cell of the same initialisation, its ``n_seeds``, ``mean`` (within ``tolerance``) and
    interval method agree; and every row's ``reference_mean`` is the merged reference's ``mean`` at
    its cell. A cell present in several runs is kept once (from the first run listing it)."""
    if not tables:
        raise DataError("merge_comparisons: no comparison tables given")
    needed = {"task", "protocol", "fraction", "metric", "init", "reference", "mean", "n_seeds", "reference_mean"}
    for label, table in tables.items():
        missing = needed - set(table.columns)
        if missing:
            raise DataError(f"{label}: not a comparison table (missing columns {sorted(missing)})")
    references = {label: set(t["reference"].dropna().astype(str)) for label, t in tables.items()}
    if len(set().union(*references.values())) != 1 or not all(references.values()):
        raise DataError(f"the runs do not share one reference initialisation: {references}")
    reference = next(iter(references.values())).pop()

    def cell_of(row) -> tuple:
        return row["task"], row["protocol"], round(float(row["fraction"]), 6), row["metric"]

    def same(a: float, b: float) -> bool:
        return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tolerance

    seen: dict[tuple, tuple[str, pd.Series]] = {}
    rows = []
    for label, table in tables.items():
        own_reference = {cell_of(r) for _, r in table.iterrows() if r["init"] == reference}
        kept_reference = {k[:4] for k in seen if k[4] == reference}
        if seen and own_reference and not own_reference & kept_reference:
            raise DataError(f"{label} shares no cell of {reference} with {', '.join(dict.fromkeys(l for l, _ in seen.values()))}: "
                            f"nothing shows that its {reference} is the same model, so its tests cannot share their table")
        for _, row in table.iterrows():
            k = (*cell_of(row), row["init"])
            if k not in seen:
                seen[k] = (label, row)
                rows.append(row)
                continue
            first, kept = seen[k]
            if int(kept["n_seeds"]) == int(row["n_seeds"]) and same(kept["mean"], row["mean"]) \
                    and str(kept.get("interval")) == str(row.get("interval")):
                continue
            where = (f"{row['task']} {row['protocol']} fraction {row['fraction']:g} {row['metric']}: "
                     f"{kept['mean']:.6f} ({int(kept['n_seeds'])} seeds, {kept.get('interval')}) vs {row['mean']:.6f} "
                     f"({int(row['n_seeds'])} seeds, {row.get('interval')})")
            if row["init"] == reference:
                raise DataError(f"the reference {reference} differs between {first} and {label} at {where}; the runs do "
                                "not share their downstream protocol (data, preprocessing, seeds, probe or fine-tuning "
                                "settings) or their interval method (rewrite both with --summary-only)")
            raise DataError(f"init {row['init']} has the same name in {first} and {label} but other results at {where} "
                            "(another pretraining?): rename it in one run or leave it out of one")
    merged = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    reference_mean = {k[:4]: float(r["mean"]) for k, (_, r) in seen.items() if k[4] == reference}
    for _, row in merged.iterrows():
        if row["init"] == reference:
            continue
        kept = reference_mean.get(cell_of(row))
        if (not np.isnan(float(row["reference_mean"]))) if kept is None else not same(kept, float(row["reference_mean"])):
            raise DataError(f"init {row['init']} ({seen[(*cell_of(row), row['init'])][0]}) was tested against a "
                            f"{reference} of mean {row['reference_mean']:.6f} at {row['task']} {row['protocol']} fraction "
                            f"{row['fraction']:g} {row['metric']}, but the merged {reference} there is "
                            f"{'absent' if kept is None else f'{kept:.6f}'}")
    return _in_table_order(merged)


def write_comparison(run: RunDir, config: Any) -> pd.DataFrame:
    """Write ``comparison.csv`` and ``comparison.md`` into the run directory."""
    table = comparison(run.path, list(config.tasks), config.reference, seed=config.seed)
    write_text(run.path / "comparison.csv", table.to_csv(index=False))
    write_text(run.path / "comparison.md", markdown_tables(table, [i.name for i in config.inits]))
    return table

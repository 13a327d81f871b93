"""Summaries of an ``idrid-ssl-gan`` results table: mean +- sd per learner and label count next to
Lecouat et al. 2018's Tables 1 and 2, the DeLong comparisons, localisation and the extension.

Reports (:mod:`retinassl.report.ssl_gan`) and the benchmark script render these tables; they read
only the results table.

**DeLong tests, per seed.** Every sampling (seed) of an SSL-GAN cell and of a baseline cell is
scored on the same 50 test images, so each (count, seed) gives one valid paired test. Pooling the
five seeds' scores into one test would count every test image five times as if independent,
shrinking the p-values by about sqrt(5) for no new evidence; averaging the scores over seeds
would test an ensemble nobody trained. So the tables give the per-seed p-values, their median and
how many of the seeds reach p < 0.05 with a higher and with a lower AUC (the tests are two-sided).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retinassl.metrics.stats import significant_by_sign, signed_count

PAPER_COUNTS: tuple[int, ...] = (10, 20, 40, 80, 149)
# Lecouat et al. 2018, Table 1 (patch) and Table 2 (image): AUC in %, mean +- sd over 5 samplings.
PAPER: dict[tuple[str, str], tuple[tuple[float, float], ...]] = {
    ("ssl-gan", "patch_auc"): ((75.8, 2.7), (79.4, 4.9), (81.7, 2.9), (83.3, 1.1), (84.5, 4.7)),
    ("convnet", "patch_auc"): ((68.3, 3.9), (72.8, 2.4), (77.3, 0.14), (79.5, 1.8), (79.6, 0.22)),
    ("resnet34", "patch_auc"): ((52.2, 23.0), (61.5, 17.0), (73.9, 10.8), (81.2, 8.0), (85.1, 2.6)),
    ("ssl-gan", "image_auc"): ((84.5, 11.5), (89.0, 10.6), (94.7, 3.3), (98.5, 0.6), (99.1, 0.34)),
    ("convnet", "image_auc"): ((71.1, 12.0), (81.4, 0.57), (87.4, 2.9), (94.5, 0.16), (97.8, 1.0)),
    ("resnet34", "image_auc"): ((71.3, 16.7), (79.4, 15.3), (80.5, 5.8), (84.2, 2.0), (98.9, 1.7)),
}


def plan(config: dict) -> list[tuple[str, str, int, int, bool]]:
    """``(label, learner, n_labelled, seed, use_pool)`` of every cell an experiment's resolved
    config (a dict, as in ``config.yaml``) plans, seed by seed (so that an interrupted sweep holds
    whole samplings), then count, then learner (the reference, the baselines, the extension)."""
    ext = config.get("extension") or {}
    learners = list(dict.fromkeys([config["reference"], *(config.get("baselines") or [])]))
    cells = []
    for seed in config["seeds"]:
        for n in config["labelled"]:
            cells.extend((name, name, n, seed, False) for name in learners)
            if (ext.get("enabled") and n in (ext.get("labelled") or config["labelled"])
                    and seed in (ext.get("seeds") or config["seeds"])):
                cells.append((ext["label"], ext.get("learner"), n, seed, True))
    return cells


def planned_cells(config: dict) -> set[tuple[str, int, int]] | None:
    """``(label, n_labelled, seed)`` of every cell of :func:`plan`; None when ``config`` is not an
    ``ssl-gan`` experiment's (no ``labelled`` or ``reference``: e.g. ``retinassl demo``'s run, whose
    config is its first stage's and whose SSL-GAN stage joins a sweep's results): nothing to filter by."""
    if not {"labelled", "reference", "seeds"} <= set(config):
        return None
    return {(label, int(n), int(seed)) for label, _, n, seed, _ in plan(config)}


def is_planned(cells: set[tuple[str, int, int]], method: str, n_labelled: int, seed: int) -> bool:
    """Whether a cell (or a ``"a vs b"`` comparison of two) is among the ``cells`` of
    :func:`planned_cells`."""
    return all((part, int(n_labelled), int(seed)) in cells for part in str(method).split(" vs "))


def planned_results(results: pd.DataFrame, config: dict | None) -> pd.DataFrame:
    """The rows of the cells the config plans. A sweep resumed with fewer seeds, counts or
    learners, or without its extension, keeps the dropped cells' rows in ``results.csv`` (nothing
    is deleted); its tables and checks leave them out."""
    if not config or results.empty:
        return results
    cells = planned_cells(config)
    if cells is None:
        return results
    keep = [is_planned(cells, m, n, s) for m, n, s in
            zip(results["method"], results["n_labelled"], results["seed"])]
    return results[np.array(keep, bool)]


def by_dataset(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows per dataset they were scored on: ``""`` for the test images (the task without
    ``@``), ``<name>`` for each external set of ``evaluate_on`` (task ``<task>@<name>``); the tables
    above are each made from one dataset's rows."""
    dataset = results["task"].astype(str).str.partition("@")[2]
    return {name: results[(dataset == name).to_numpy()] for name in dict.fromkeys(["", *dataset])}


def metric_stats(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``method, n_labelled, mean, sd, count`` of ``metric`` over seeds."""
    rows = results[results["metric"] == metric]
    if rows.empty:
        return pd.DataFrame(columns=["method", "n_labelled", "mean", "sd", "count"])
    grouped = rows.groupby(["method", "n_labelled"], sort=False)["value"]
    stats = grouped.agg(mean="mean",
                        sd=lambda v: float(np.std(v.dropna(), ddof=1)) if v.count() > 1 else float("nan"),
                        count="count").reset_index()
    stats["n_labelled"] = stats["n_labelled"].astype(int)
    return stats


def _fmt(mean: float, sd: float, count: int | None = None, full: int | None = None,
         scale: float = 100.0) -> str:
    """``mean ± sd`` in %, with ``(n=count)`` when fewer than ``full`` samplings contributed."""
    if not np.isfinite(mean):
        return "-"
    text = f"{scale * mean:.1f} ± {scale * sd:.1f}" if np.isfinite(sd) else f"{scale * mean:.1f}"
    return text + (f" (n={count})" if count is not None and full is not None and count < full else "")


def comparison_table(results: pd.DataFrame, metric: str, methods: list[str]) -> pd.DataFrame:
    """Rows per method (ours, then the paper's), columns per label count: AUC % mean ± sd (``n=``
    marks cells with fewer samplings than the fullest cell, e.g. a diverged sampling)."""
    stats = metric_stats(results, metric)
    counts = sorted(set(stats["n_labelled"]) | set(PAPER_COUNTS)) if not stats.empty else list(PAPER_COUNTS)
    full = int(stats["count"].max()) if not stats.empty else None
    rows = []
    for method in methods:
        ours = {"method": f"{method} (this run)"}
        for n in counts:
            hit = stats[(stats["method"] == method) & (stats["n_labelled"] == n)]
            ours[str(n)] = _fmt(float(hit["mean"].iloc[0]), float(hit["sd"].iloc[0]),
                                int(hit["count"].iloc[0]), full) if len(hit) else "-"
        rows.append(ours)
        paper = PAPER.get((method, metric))
        if paper is not None:
            row = {"method": f"{method} (paper)"}
            for n in counts:
                row[str(n)] = (f"{paper[PAPER_COUNTS.index(n)][0]:.1f} ± {paper[PAPER_COUNTS.index(n)][1]:g}"
                               if n in PAPER_COUNTS else "-")
            rows.append(row)
    return pd.DataFrame(rows)


def delong_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per comparison and label count: per-seed p-values, their median, the seeds with p < 0.05
    split by the sign of their AUC difference (``+higher/-lower`` for a than b: the tests are
    two-sided) and the mean AUC difference (a - b, image level)."""
    p = results[results["metric"] == "delong_p"]
    d = results[results["metric"] == "auc_difference"]
    rows = []
    for (pair, n), group in p.groupby(["method", "n_labelled"], sort=False):
        group = group.sort_values("seed")
        diffs = d[(d["method"] == pair) & (d["n_labelled"] == n)].set_index("seed")["value"]
        values = group["value"].to_numpy(float)
        better, worse = significant_by_sign(values, diffs.reindex(group["seed"]).to_numpy(float))
        rows.append({"comparison": pair, "n_labelled": int(n),
                     "AUC difference (mean, pts)": f"{100 * diffs.mean():+.1f}" if len(diffs) else "-",
                     "p per seed": ", ".join(f"{v:.3g}" for v in values),
                     "median p": f"{np.nanmedian(values):.3g}" if np.isfinite(values).any() else "-",
                     "seeds p<0.05": signed_count(better, worse, len(values))})
    return pd.DataFrame(rows)


def metric_table(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows per method, columns per label count: ``metric`` % mean ± sd over seeds."""
    stats = metric_stats(results, metric)
    full = int(stats["count"].max()) if not stats.empty else None
    rows = []
    for method in dict.fromkeys(stats["method"]):
        row = {"method": method}
        for n in sorted(set(stats["n_labelled"])):
            hit = stats[(stats["method"] == method) & (stats["n_labelled"] == n)]
            row[str(n)] = _fmt(float(hit["mean"].iloc[0]), float(hit["sd"].iloc[0]),
                               int(hit["count"].iloc[0]), full) if len(hit) else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def summary_dict(results: pd.DataFrame) -> dict:
    """Every aggregated number as plain Python (for JSON)."""
    out: dict = {"metrics": {}, "delong": []}
    for metric in ("patch_auc", "image_auc", "localisation_auc", "train_seconds", "train_steps"):
        stats = metric_stats(results, metric)
        out["metrics"][metric] = [
            {"method": r.method, "n_labelled": int(r.n_labelled), "mean": float(r.mean),
             "sd": float(r.sd), "count": int(r.count),
             "values": results[(results["metric"] == metric) & (results["method"] == r.method)
                               & (results["n_labelled"] == r.n_labelled)].sort_values("seed")["value"].tolist()}
            for r in stats.itertuples()]
    p = results[results["metric"] == "delong_p"]
    for (pair, n), group in p.groupby(["method", "n_labelled"], sort=False):
        group = group.sort_values("seed")
        diffs = results[(results["metric"] == "auc_difference") & (results["method"] == pair)
                        & (results["n_labelled"] == n)].sort_values("seed")["value"]
        out["delong"].append({"comparison": pair, "n_labelled": int(n),
                              "seeds": group["seed"].astype(int).tolist(),
                              "p_values": group["value"].tolist(), "auc_differences": diffs.tolist()})
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a small frame (values as text)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])

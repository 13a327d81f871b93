"""Report sections of a transfer sweep (:mod:`retinassl.sweeps.transfer`), built only from the run's
results table, prediction files and figures: metric vs label-fraction curves with intervals, the
DeLong p-values against the reference initialisation, t-SNE maps and Grad-CAM overlays."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.io.rundir import RunDir
from retinassl.figures.plots import plt, save_figure
from retinassl.metrics.intervals import METHOD, METHOD_SENTENCE


def _comparison(run: RunDir) -> tuple[str, list[str], pd.DataFrame] | None:
    """``(reference, inits in order, table)`` from the sweep's ``comparison.csv`` (written from the
    results table and the prediction files; the report reads nothing else)."""
    saved = run.path / "comparison.csv"
    if not saved.is_file():
        return None
    table = pd.read_csv(saved)
    if table.empty or "reference" not in table.columns:
        return None
    reference = str(table["reference"].iloc[0])
    inits = [reference] + [i for i in dict.fromkeys(table["init"].astype(str)) if i != reference]
    return reference, inits, table


def curves_figure(table: pd.DataFrame, task: str, metric: str, path: Path, inits: list[str]) -> Path:
    """``metric`` vs label fraction (log axis) per initialisation, one panel per protocol, with
    the comparison table's 95 % intervals as error bars (initialisations dodged sideways)."""
    block = table[(table["task"] == task) & (table["metric"] == metric)]
    protocols = [p for p in ("probe", "finetune") if p in set(block["protocol"])]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 4.0), squeeze=False,
                             sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, protocol in zip(axes[0], protocols):
        ticks: set[float] = set()
        for n, init in enumerate(inits):
            rows = block[(block["protocol"] == protocol) & (block["init"] == init)].sort_values("fraction")
            if rows.empty:
                continue
            x = rows["fraction"].to_numpy(float) * 100
            ticks |= set(x)
            dodge = x * (1 + 0.025 * (n - (len(inits) - 1) / 2))  # side by side on the log axis
            mean, lo, hi = (rows[c].to_numpy(float) for c in ("mean", "lo", "hi"))
            style = {"color": "black", "lw": 2.0, "ls": "--"} if n == 0 else {"color": colours(n % 10), "lw": 1.3}
            ax.plot(dodge, mean, marker="o", ms=3, label=init, **style)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():  # the interval itself: a bootstrap interval need not contain the mean
                ax.vlines(dodge[ok], lo[ok], hi[ok], colors=style["color"], lw=0.8, alpha=0.7)
        ax.set_xscale("log")
        if len(ticks) == 1:  # one label fraction: centre it (the automatic limits hug the dodged points)
            ax.set_xlim(min(ticks) / 1.6, min(ticks) * 1.6)
        ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("labelled training images (%)")
        ax.set_title("linear probe" if protocol == "probe" else "fine-tuning", fontsize=11)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=9, loc="lower right")
    fig.suptitle(f"{task}: {metric} vs label fraction (mean over seeds, 95 % interval)", fontsize=11)
    return save_figure(fig, path)


def transfer_curves_section(run: RunDir):  # -> Section | None
    """Metric vs label-fraction curves of every task (linear probe and fine-tuning)."""
    from retinassl.report.sections import Section, figure_html

    found = _comparison(run)
    if found is None:
        return None
    reference, inits, table = found
    methods = sorted(set(table["interval"].dropna().astype(str))) if "interval" in table.columns else []
    bars = (f"error bars are the {METHOD_SENTENCE}" if methods == [METHOD]
            else f"error bars are 95 % intervals ({' / '.join(methods) or 'none'})")
    parts = []
    for (task, metric), _ in table.groupby(["task", "metric"], sort=False):
        name = f"transfer-{task}-{metric}.png"
        curves_figure(table, task, metric, run.report_dir / "figures" / name, inits)
        caption = (f"<b>{html.escape(task)}</b>, {html.escape(metric)} against the share of labelled "
                   f"training images, mean over label-subset seeds. <b>Look at</b>: the coloured lines "
                   f"above the dashed reference ({html.escape(reference)}), most of all at the lowest "
                   "label fractions where pretraining should matter, and whether their error bars "
                   "clear the reference's.")
        parts.append(figure_html(name, f"{task} {metric}", caption))
    note = f"Mean over label-subset seeds; {bars}. The dashed line is the reference ({reference})."
    return Section("Transfer: metric vs label fraction", "".join(parts) + f'<p class="note">{html.escape(note)}</p>')


def transfer_interval_section(run: RunDir):  # -> Section | None
    """The comparison table's means with their 95 % intervals: one table per task, metric and
    protocol, initialisations in rows and label fractions in columns."""
    from retinassl.report.sections import Section, table_html
    from retinassl.report.tables import percent, with_interval

    found = _comparison(run)
    if found is None:
        return None
    reference, inits, table = found
    parts = []
    for (task, metric, protocol), block in table.groupby(["task", "metric", "protocol"], sort=False):
        shown = pd.DataFrame({"initialisation": [i for i in inits if i in set(block["init"])]})
        for f in sorted(set(block["fraction"])):
            cells = block[block["fraction"] == f].set_index("init")
            shown[percent(f)] = [with_interval(*cells.loc[i, ["mean", "lo", "hi"]].astype(float))
                                 if i in cells.index else "" for i in shown["initialisation"]]
        label = "linear probe" if protocol == "probe" else "fine-tuning"
        parts.append(f"<h3>{html.escape(task)} ({html.escape(metric)}), {label}</h3>"
                     + table_html(shown, text_columns=("initialisation",)))
    note = (f"Mean over label-subset seeds [95 % interval]; columns: share of labelled training images. "
            f"{METHOD_SENTENCE}. Reference: {reference}.")
    return Section("Transfer: metrics with 95 % intervals", f'<p class="note">{html.escape(note)}</p>' + "".join(parts))


def transfer_delong_section(run: RunDir):  # -> Section | None
    """DeLong p-values of each initialisation against the reference, at every label fraction."""
    from retinassl.report.sections import Section, table_html
    from retinassl.report.tables import percent

    found = _comparison(run)
    if found is None:
        return None
    reference, _, table = found
    tested = table[np.isfinite(table["p"].to_numpy(float))]
    if tested.empty:
        return None
    parts = []
    for (task, metric, protocol), block in tested.groupby(["task", "metric", "protocol"], sort=False):
        wide = block.pivot_table(index="init", columns="fraction", values="p", aggfunc="first")
        delta = block.pivot_table(index="init", columns="fraction", values="delta", aggfunc="first")
        shown = pd.DataFrame(index=wide.index)
        for f in wide.columns:
            shown[percent(f)] = [_p_cell(wide.at[i, f], delta.at[i, f]) for i in wide.index]
        shown = shown.reset_index()
        label = "linear probe" if protocol == "probe" else "fine-tuning"
        parts.append(f"<h3>{html.escape(task)} ({html.escape(metric)}), {label}</h3>"
                     + table_html(shown, text_columns=("init",)))
    note = (f"Two-sided DeLong test of each initialisation against {html.escape(reference)} on "
            "the same test images, on the seed-ensemble scores (each image's score averaged over "
            "label-subset seeds); in brackets the difference of the mean metric (init minus "
            "reference). p &lt; 0.05 is marked *; columns: share of labelled training images.")
    return Section("Transfer: DeLong p-values vs the reference", f'<p class="note">{note}</p>' + "".join(parts))


def transfer_selection_section(run: RunDir):  # -> Section | None
    """The pretraining seed kept per initialisation on held-out training patients (``pretrain_seeds``;
    ``data/pretrain-selection-<init>.json``): each seed's validation score."""
    from retinassl.report.sections import Section, table_html
    from retinassl.sweeps.transfer_inits import selection_records

    records = selection_records(run)
    if not records:
        return None
    rows = [{"initialisation": r["init"], "pretraining seed": str(c["seed"]),
             f"validation {r['metric']}": "" if c["mean"] is None or not math.isfinite(c["mean"]) else
             f"{c['mean']:.3f}", "kept": "yes" if c["seed"] == r["chosen"] else ""}
            for r in records for c in r["candidates"]]
    first = records[0]
    note = (f"An initialisation with several pretraining seeds was pretrained once per seed; the encoder kept (used "
            f"by every cell above) is the one whose linear probe scored best on training patients held out from "
            f"the downstream labels ({first['val_fraction']:.0%} of them, stratified; {first['task']}, "
            f"{first['metric']}, mean of {first['selection_seeds']} held-out splits); no test image is looked at. "
            f"The spread between seeds is the variation of the pretraining itself.")
    kept_out = {r["init"]: r["never_held_out"] for r in records if r.get("never_held_out")}
    if kept_out:
        note += (" Training images whose labels or masks the pretraining read were never held out (their patients "
                 "stay in the fitted part; the encoder knows their answers, as it knows no test image's): "
                 + ", ".join(f"{n} for {init}" for init, n in kept_out.items()) + ".")
        grouped = [r["init"] for r in records if r.get("never_held_out") and r.get("probe_inner_cv") == "grouped"]
        if grouped:
            note += (f" Nor did the probe's choice of C validate on them ({', '.join(grouped)}: inner folds of "
                     "whole patients, those images always fitted).")
    before = [r["init"] for r in records if "never_held_out" not in r]
    if before:
        note += (f" Chosen before that rule existed ({', '.join(before)}): its held-out splits may have held out "
                 "images whose labels or masks the pretraining read.")
    return Section("Transfer: pretraining seeds chosen on validation data",
                   f'<p class="note">{html.escape(note)}</p>'
                   + table_html(pd.DataFrame(rows), text_columns=("initialisation", "pretraining seed", "kept")))


def transfer_tuning_section(run: RunDir):  # -> Section | None
    """The fine-tuning settings chosen per initialisation on held-out training patients
    (``finetune_tuning``; ``data/tuning-<init>.json``): each candidate's mean validation score."""
    from retinassl.report.sections import Section, table_html
    from retinassl.sweeps.transfer_tuning import tuning_records

    records = tuning_records(run)
    if not records:
        return None
    rows = []
    for r in records:
        for c in r["candidates"]:
            rows.append({"initialisation": r["init"],
                         "setting": ", ".join(f"{k} {v}" for k, v in c["values"].items()),
                         f"validation {r['metric']}": "" if c["mean"] is None or not math.isfinite(c["mean"])
                         else f"{c['mean']:.3f}",
                         "chosen": "yes" if c["values"] == r["chosen"] else ""})
    first = records[0]
    note = (f"Each initialisation's fine-tuning settings were chosen before any test cell, on the training "
            f"images only: {first['val_fraction']:.0%} of the training patients held out (stratified), the "
            f"other training images subsampled to a cell's size at {first['fraction']:g} of the labels, each "
            f"candidate trained as a cell is and scored on the held-out patients ({first['task']}, "
            f"{first['metric']}), mean of {len(first['seeds'])} tuning seed(s). The fine-tuning cells above "
            f"use the chosen setting of their initialisation.")
    return Section("Transfer: fine-tuning settings tuned on validation data",
                   f'<p class="note">{html.escape(note)}</p>'
                   + table_html(pd.DataFrame(rows), text_columns=("initialisation", "setting", "chosen")))


def _p_cell(p: float, delta: float) -> str:
    if not math.isfinite(p):
        return ""
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return f"{text}{'*' if p < 0.05 else ''} ({delta:+.3f})"


def tsne_section(run: RunDir):  # -> Section | None
    from retinassl.report.sections import gallery_section

    return gallery_section(run, "tsne-", "t-SNE of frozen embeddings",
                           "Each initialisation's pooled encoder embeddings of the labelled images "
                           "(train and test), t-SNE with a fixed seed, coloured by the label. <b>Look at</b>: "
                           "whether the classes form separate clusters (the encoder's features carry the "
                           "label without any training on it) or mix.")


def gradcam_section(run: RunDir):  # -> Section | None
    from retinassl.report.sections import colour_scale_html, gallery_section

    return gallery_section(run, "gradcam-", "Grad-CAM of fine-tuned models",
                           "Grad-CAM (MONAI) at the encoder's deepest feature map of the model fine-tuned "
                           "on all labelled images (first seed); the same test images for every "
                           "initialisation; 'out' is the explained output (logit or log-odds). <b>Look at</b>: "
                           "whether the maps light up lesions and the optic disc region or image borders "
                           "and background (a shortcut).", columns=1, natural=True,
                           scale=colour_scale_html("0", "1", "each map min-max scaled to [0, 1] per "
                                                   "image; opacity grows with the value"))

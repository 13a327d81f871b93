"""Build ``report/index.html`` for a run from its results table, predictions and figures.

A report is a list of sections; each section builder is a plain function ``(run) -> Section | None``
listed in :data:`SECTION_BUILDERS` (capabilities add their builders there explicitly).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from retinassl.atomic import write_text
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.figures.plots import roc_figure
from retinassl.report.curves import training_curves_section
from retinassl.report.external import misses_section, reliability_section
from retinassl.report.oct import oct_section
from retinassl.report.sections import Section, gallery_section, table_html
from retinassl.report.ssl_gan import ssl_gan_section
from retinassl.report.transfer import gradcam_section, transfer_curves_section, transfer_delong_section, tsne_section


def summary_section(run: RunDir) -> Section | None:
    """Mean, standard deviation and count of every metric over seeds and folds."""
    if not run.results_file.is_file():
        return None
    results = read_results(run.results_file)
    keys = ["experiment", "task", "method", "init", "protocol", "fraction", "metric"]
    results["fraction"] = results["fraction"].astype(str).replace("nan", "")
    grouped = results.groupby(keys, sort=False)["value"]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    table = table.loc[:, [c for c in table.columns if not (table[c].astype(str) == "").all()]]
    return Section("Results (mean, sd and count over seeds/folds)",
                   table_html(table, text_columns=tuple(c for c in keys if c in table.columns)))


def roc_section(run: RunDir) -> Section | None:
    """ROC curves of every binary prediction file (columns ``label`` and ``score``)."""
    folder = run.path / "predictions"
    if not folder.is_dir():
        return None
    curves = {}
    for path in sorted(folder.glob("*.csv")):
        frame = pd.read_csv(path)
        if {"label", "score"} <= set(frame.columns) and frame["label"].nunique() == 2:
            curves[path.stem] = (frame["label"].to_numpy(), frame["score"].to_numpy())
    if not curves:
        return None
    figure = roc_figure(curves, run.report_dir / "figures" / "roc.png", title="Test ROC")
    return Section("ROC curves", f'<img src="figures/{figure.name}" alt="ROC curves" width="460">')


def heatmap_section(run: RunDir) -> Section | None:
    return gallery_section(run, "heatmap-", "Patch heatmaps (test images)",
                           "Patch scores (sigmoid of patch logits) smoothed with a Gaussian blur; the "
                           "ground-truth lesion mask is outlined in cyan.")


def vessel_section(run: RunDir) -> Section | None:
    return gallery_section(run, "vessels-", "Vessel segmentation overlays",
                           "Each row: image | ground truth | predicted probability | errors inside the "
                           "field of view (white: true positive, red: false positive, blue: false "
                           "negative; grey: outside the FOV). Captions: dataset and image id.")


SECTION_BUILDERS: list[Callable[[RunDir], Section | None]] = [
    summary_section, roc_section, reliability_section, misses_section, heatmap_section, vessel_section,
    training_curves_section, oct_section, transfer_curves_section, transfer_delong_section, tsne_section,
    gradcam_section, ssl_gan_section]


def build_report(run: RunDir, title: str | None = None) -> Path:
    """Write ``report/index.html``; returns its path."""
    env = Environment(loader=PackageLoader("retinassl", "report/templates"),
                      autoescape=select_autoescape(["html"]))
    sections = [s for builder in SECTION_BUILDERS if (s := builder(run)) is not None]
    status = run.status()
    config = run.config_file.read_text() if run.config_file.is_file() else ""
    page = env.get_template("report.html").render(
        title=title or status.get("name", run.path.name), generated=_dt.datetime.now().isoformat(timespec="seconds"),
        run_path=str(run.path), sections=sections, skipped=status.get("skipped", []), config=config)
    path = run.report_dir / "index.html"
    write_text(path, page)
    return path

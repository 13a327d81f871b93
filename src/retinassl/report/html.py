"""Build ``report/index.html`` for a run from its results table, predictions and figures.

A report is a list of sections; each section builder is a plain function ``(run) -> Section | None``
listed in :data:`SECTION_BUILDERS` (capabilities add their builders there explicitly).
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from ..atomic import write_text
from ..results import read_results
from ..rundir import RunDir
from .plots import roc_figure


@dataclass
class Section:
    title: str
    html: str


def table_html(frame: pd.DataFrame, text_columns: tuple[str, ...] = ()) -> str:
    """A small HTML table (text columns left-aligned, numbers with 3 decimals)."""
    head = "".join(f'<th class="{"t" if c in text_columns else ""}">{html.escape(str(c))}</th>'
                   for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = row[c]
            text = f"{v:.3f}" if isinstance(v, (float, np.floating)) and c not in text_columns else str(v)
            cells.append(f'<td class="{"t" if c in text_columns else ""}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


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


def gallery_section(run: RunDir, prefix: str, title: str, note: str = "") -> Section | None:
    """A gallery of the PNG figures whose names start with ``prefix``."""
    figures = sorted((run.report_dir / "figures").glob(f"{prefix}*.png"))
    if not figures:
        return None
    items = "".join(f'<figure><img src="figures/{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                    f"<figcaption>{html.escape(p.stem.removeprefix(prefix))}</figcaption></figure>"
                    for p in figures)
    return Section(title, (f'<p class="note">{note}</p>' if note else "") + f'<div class="gallery">{items}</div>')


def heatmap_section(run: RunDir) -> Section | None:
    return gallery_section(run, "heatmap-", "Patch heatmaps (test images)",
                           "Patch scores (sigmoid of patch logits) smoothed with a Gaussian blur; the "
                           "ground-truth lesion mask is outlined in cyan.")


def vessel_section(run: RunDir) -> Section | None:
    return gallery_section(run, "vessels-", "Vessel segmentation overlays",
                           "Each row: image | ground truth | predicted probability | errors inside the "
                           "field of view (white: true positive, red: false positive, blue: false "
                           "negative; grey: outside the FOV). Captions: dataset and image id.")


SECTION_BUILDERS: list[Callable[[RunDir], Section | None]] = [summary_section, roc_section,
                                                               heatmap_section, vessel_section]

# Builders defined in their own modules (imported here, after Section and table_html exist).
from .curves import training_curves_section  # noqa: E402

SECTION_BUILDERS.append(training_curves_section)
from ..oct.report import oct_section  # noqa: E402

SECTION_BUILDERS.append(oct_section)
from .transfer import (gradcam_section, transfer_curves_section,  # noqa: E402
                       transfer_delong_section, tsne_section)

SECTION_BUILDERS.extend([transfer_curves_section, transfer_delong_section, tsne_section,
                         gradcam_section])
from ..semisup.report import ssl_gan_section  # noqa: E402

SECTION_BUILDERS.append(ssl_gan_section)


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

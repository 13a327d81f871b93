"""Build ``report/index.html`` for a run from its results table, predictions and figures.

The page reads like a paper's results section: the summary (what ran on which data, the headline
numbers with their 95 % intervals, one sentence per comparison), then the figures with captions that
say what to look at, then the tables of the metrics that matter, and the full raw results table last
(collapsed, with a link to the CSV). A report is a list of sections; each section builder is a plain
function ``(run) -> Section | None`` listed in :data:`SECTION_BUILDERS` in page order (capabilities
add their builders there explicitly). Every figure is a PNG under ``report/figures/``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from retinassl.atomic import write_text
from retinassl.io.rundir import RunDir
from retinassl.figures.plots import roc_figure
from retinassl.report.cost import cost_section
from retinassl.report.curves import training_curves_section
from retinassl.report.external import misses_section, reliability_section
from retinassl.report.oct import oct_section
from retinassl.report.sections import Section, colour_scale_html, figure_html, gallery_section
from retinassl.report.ssl_gan import ssl_gan_section
from retinassl.report.summary import summary_section
from retinassl.report.tables import metrics_table_html, raw_results_html
from retinassl.report.transfer import (gradcam_section, transfer_curves_section, transfer_delong_section,
                                       transfer_interval_section, transfer_selection_section, transfer_tuning_section,
                                       tsne_section)


def metrics_section(run: RunDir) -> Section | None:
    """The metrics that matter, one row per task/method/initialisation/protocol/label fraction."""
    table = metrics_table_html(run)
    return Section("Metrics", table) if table else None


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
    return Section("ROC curves", figure_html(
        figure.name, "ROC curves", "Test-set ROC curve of each prediction file (AUC in the legend). "
        "<b>Look at</b>: how far each curve bows towards the top-left corner; the dashed diagonal is "
        "chance. Steps are single test images: with few test images the curve is coarse.", cls="square"))


def heatmap_section(run: RunDir) -> Section | None:
    return gallery_section(run, "heatmap-", "Patch heatmaps (test images)",
                           "Patch scores (sigmoid of patch logits) smoothed with a Gaussian blur; the "
                           "ground-truth lesion mask is outlined in cyan. <b>Look at</b>: whether the hot "
                           "regions sit inside the cyan outlines (lesions) and stay cold on healthy "
                           "images.", columns=3,
                           scale=colour_scale_html("patch probability 0", "1", "opacity grows with the "
                                                   "value: where the score is low the photograph shows "
                                                   "through"))


def reconstructions_section(run: RunDir) -> Section | None:
    return gallery_section(run, "reconstructions-", "Masked-autoencoder reconstructions (pool images)",
                           "Each row: the image | the patches the encoder saw (hidden ones grey) | the "
                           "reconstruction (visible patches copied; hidden ones predicted as normalised "
                           "pixels and put back on each TRUE patch's mean and contrast, as MAE shows them, "
                           "so their colour and brightness come from the original). <b>Look at</b>: the "
                           "structure inside the hidden patches: vessels, the disc rim and lesions coming back "
                           "mean the encoder models anatomy; flat tiles mean it learned little beyond colour.",
                           columns=1)


def vessel_section(run: RunDir) -> Section | None:
    return gallery_section(run, "vessels-", "Vessel segmentation overlays",
                           "Each row: image | ground truth | predicted probability | errors inside the "
                           "field of view (white: true positive, red: false positive, blue: false "
                           "negative; grey: outside the FOV). <b>Look at</b>: the error panel: red along "
                           "vessel borders is width disagreement, blue in thin vessels is what the model "
                           "misses. Captions: dataset and image id.", columns=1)


SECTION_BUILDERS: list[Callable[[RunDir], Section | None]] = [
    summary_section,
    # figures
    transfer_curves_section, roc_section, vessel_section, heatmap_section, reliability_section, misses_section,
    oct_section, tsne_section, gradcam_section, ssl_gan_section, reconstructions_section, training_curves_section,
    # tables
    transfer_interval_section, transfer_delong_section, transfer_selection_section, transfer_tuning_section,
    metrics_section, cost_section]


def build_report(run: RunDir, title: str | None = None) -> Path:
    """Write ``report/index.html``; returns its path."""
    env = Environment(loader=PackageLoader("retinassl", "report/templates"),
                      autoescape=select_autoescape(["html"]))
    sections = [s for builder in SECTION_BUILDERS if (s := builder(run)) is not None]
    status = run.status()
    config = run.config_file.read_text() if run.config_file.is_file() else ""
    page = env.get_template("report.html").render(
        title=title or status.get("name", run.path.name), generated=_dt.datetime.now().isoformat(timespec="seconds"),
        run_path=str(run.path), sections=sections, skipped=status.get("skipped", []), config=config,
        raw=raw_results_html(run))
    path = run.report_dir / "index.html"
    write_text(path, page)
    return path

"""The ``idrid-ssl-gan`` section of a run's HTML report: the comparison with Lecouat et al. 2018's
Tables 1 and 2, DeLong tests, localisation AUC, the extension, the error anatomy, ROC curves and the
heatmap gallery.

Listed in :data:`retinassl.report.html.SECTION_BUILDERS`; it reads only the results table, the
predictions under ``predictions/ssl-gan/``, ``test-patch-labels.csv`` and the gallery figures, so
``retinassl report RUN`` rebuilds it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.metrics.classification import roc_points
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.metrics.anatomy import ANATOMY_TITLES, TEST_PATCH_LABELS, anatomy_table, diseased_image_table
from retinassl.metrics.ssl_gan_summary import (by_dataset, comparison_table, delong_table, is_planned, metric_table,
                                              planned_cells, planned_results)

ROC_FIGURE = "sslgan-roc.png"
_CELL = re.compile(r"^(?P<label>.+)-n(?P<n>\d+)-s(?P<seed>\d+)$")


def read_predictions(folder: Path, config: dict | None = None) -> dict[tuple[str, int], list[pd.DataFrame]]:
    """``(label, n_labelled) -> [predictions of each seed]`` from ``predictions/ssl-gan``; with the
    run's resolved ``config``, only the cells it plans (see :func:`~.summary.planned_results`)."""
    out: dict[tuple[str, int], list[pd.DataFrame]] = {}
    cells = planned_cells(config) if config else None
    for path in sorted(folder.glob("*.csv")):
        match = _CELL.match(path.stem)
        if match and (cells is None or is_planned(cells, match["label"], int(match["n"]), int(match["seed"]))):
            out.setdefault((match["label"], int(match["n"])), []).append(pd.read_csv(path))
    return out


def _anatomy_html(run: RunDir, predictions: dict[tuple[str, int], list[pd.DataFrame]]) -> str:
    """The error-anatomy table (see :mod:`.anatomy`), when the sweep saved the test patch labels."""
    from retinassl.report.sections import table_html

    path = run.path / TEST_PATCH_LABELS
    if not predictions or not path.is_file():
        return ""
    patch_labels = pd.read_csv(path)
    table = anatomy_table(predictions, patch_labels).sort_values(["method", "n_labelled"])
    table = table.rename(columns={"method": "learner", "n_labelled": "labelled", **ANATOMY_TITLES})
    n_max = max(n for _, n in predictions)
    per_image = diseased_image_table(predictions, patch_labels, n_max).round(3)
    per_image = per_image.rename_axis("diseased test image").reset_index()
    return ("<h3>Where the image-level AUC is lost (means over samplings)</h3>"
            '<p class="note">The paper\'s image score sums 64 patch sigmoids (this analysis uses that '
            "rule for every learner), so an error shared by all the "
            "patches of an image costs image-level AUC that the patch AUC does not show: "
            "<em>independent patch errors</em> redraws every "
            "patch logit from the logits of patches with the same label (200 draws), and the one-sided "
            "redraws do so for the healthy or the DR images only, to show on which side the AUC is "
            "lost; the "
            "<em>between-image share</em> is the part of the healthy images' logit variance that "
            "lies between images (an image-wide offset).</p>"
            + table_html(table, text_columns=("learner",))
            + f"<h3>Diseased test images at {n_max} labels, the most missed first (means over "
            "samplings and, for the order, over learners)</h3>"
            '<p class="note"><em>healthy at or above</em>: the share of the healthy test images '
            "whose image score is at or above this image's (0: ranked above every healthy image); "
            "<em>lesion vs healthy patches AUC</em>: this image's lesion patches against all the "
            "healthy images' patches (near 0.5: its lesions look like healthy tissue to the "
            "learner).</p>"
            + table_html(per_image, text_columns=("diseased test image",)))


def roc_grid_figure(predictions: dict[tuple[str, int], list[pd.DataFrame]], path: Path) -> Path:
    """One panel per label count; per learner the ROC curve averaged over seeds (true-positive
    rate interpolated on a common false-positive grid)."""
    from retinassl.figures.plots import plt, save_figure

    counts = sorted({n for _, n in predictions})
    labels = list(dict.fromkeys(label for label, _ in predictions))
    fig, axes = plt.subplots(1, len(counts), figsize=(3.2 * len(counts), 3.3), squeeze=False)
    grid = np.linspace(0, 1, 101)
    for ax, n in zip(axes[0], counts):
        for label in labels:
            frames = predictions.get((label, n), [])
            curves, aucs = [], []
            for frame in frames:
                if frame["label"].nunique() < 2:
                    continue
                fpr, tpr = roc_points(frame["label"].to_numpy(), frame["score"].to_numpy())
                curves.append(np.interp(grid, fpr, tpr))
                aucs.append(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))
            if curves:
                ax.plot(grid, np.mean(curves, axis=0), lw=1.4,
                        label=f"{label} ({100 * np.mean(aucs):.1f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls="--")
        ax.set_title(f"{n} labelled images", fontsize=9)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.legend(loc="lower right", fontsize=6)
    axes[0][0].set_ylabel("true-positive rate (mean over seeds)", fontsize=8)
    return save_figure(fig, path)


def ssl_gan_section(run: RunDir):  # -> Section | None (imported lazily: report.html imports us)
    """The experiment's tables and figures, when the run is an ``ssl-gan`` experiment."""
    from retinassl.report.sections import Section, gallery_section, table_html

    folder = run.path / "predictions" / "ssl-gan"
    if not folder.is_dir() or not run.results_file.is_file():
        return None
    from retinassl.config import read_yaml

    # bounded (alias bombs refused, the file named): a run directory may come from anyone
    config = read_yaml(run.config_file) if run.config_file.is_file() else None
    datasets = by_dataset(planned_results(read_results(run.results_file), config))
    results = datasets.pop("")  # the test images; external sets (evaluate_on) after the gallery
    methods = list(dict.fromkeys(results.loc[results["metric"] == "image_auc", "method"]))
    parts = ['<p class="note">AUC in %, mean ± sd over the labelled samplings (seeds; n = number of '
             'samplings when not 5). Paper: Lecouat et al. 2018, Tables 1 (patch) and 2 (image). The '
             'image score is each learner\'s <code>image_score</code> rule: by default, as the paper, the '
             'sum over the 64 patches of sigmoid(patch logit); <code>tissue</code>: their mean over the '
             'cells wholly inside the field of view.</p>']
    for metric, title in (("image_auc", "Image-level test AUC"), ("patch_auc", "Patch-level test AUC")):
        parts.append(f"<h3>{title}</h3>")
        parts.append(table_html(comparison_table(results, metric, methods), text_columns=("method",)))
    parts.append("<h3>Localisation AUC (smoothed patch heatmap vs lesion masks, diseased test "
                 "images)</h3>")
    parts.append(table_html(metric_table(results, "localisation_auc"), text_columns=("method",)))
    delong = delong_table(results)
    if not delong.empty:
        parts.append("<h3>Paired DeLong tests (image level, the same test images, one test "
                     "per seed)</h3>")
        parts.append('<p class="note">Each seed\'s two classifiers are scored on the same test '
                     'images, so each seed is one valid paired test; the seeds are not pooled '
                     '(that would count every test image five times).</p>')
        parts.append(table_html(delong, text_columns=tuple(delong.columns)))
    predictions = read_predictions(folder, config)
    anatomy = _anatomy_html(run, predictions)
    if anatomy:
        parts.append(anatomy)
    if predictions:
        figure = roc_grid_figure(predictions, run.report_dir / "figures" / ROC_FIGURE)
        parts.append(f'<h3>ROC curves (image level)</h3><img src="figures/{html.escape(figure.name)}" '
                     f'alt="ROC curves" style="max-width:100%">')
    gallery = gallery_section(run, "sslgan-heatmap-", "",
                              "Patch probabilities smoothed with a Gaussian blur; lesion masks "
                              "outlined in cyan. File names: learner-image.")
    if gallery is not None:
        parts.append("<h3>Heatmap gallery (test images)</h3>" + gallery.html)
    for name, rows in datasets.items():
        parts.append(f"<h3>External validation: {html.escape(name)} (image-level AUC, %)</h3>")
        parts.append('<p class="note">Every cell\'s classifier applied to an external dataset it never '
                     'saw (<code>evaluate_on</code>), mean ± sd over seeds; predictions in '
                     f'<code>predictions/ssl-gan@{html.escape(name)}/</code>.</p>')
        parts.append(table_html(metric_table(rows, "auc"), text_columns=("method",)))
        delong = delong_table(rows)
        if not delong.empty:
            parts.append(table_html(delong, text_columns=tuple(delong.columns)))
    return Section("Patch SSL-GAN vs supervised baselines (Lecouat et al. 2018)", "\n".join(parts))

"""Figures for reports (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retinassl.atomic import atomic_path  # noqa: E402
from retinassl.metrics.classification import (expected_calibration_error, reliability_bins, roc_auc,  # noqa: E402
                                              roc_points)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
               title: str = "ROC") -> Path:
    """One ROC curve per name from ``name -> (labels, scores)``; AUC in the legend."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, (labels, scores) in curves.items():
        fpr, tpr = roc_points(labels, scores)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {roc_auc(labels, scores):.3f})")
    return save_figure(_unit_square(fig, ax, "false-positive rate", "true-positive rate", title, "lower right"), path)


def reliability_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                       title: str = "Reliability", bins: int = 10) -> Path:
    """The reliability diagram of each name's ``(labels, probabilities)``: observed positive rate
    against mean predicted probability per equal-width bin (:func:`reliability_bins`; marker area
    by the bin's count), the diagonal of perfect calibration, and the ECE in the legend."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, (labels, probabilities) in curves.items():
        mean, rate, count = reliability_bins(labels, probabilities, bins)
        inside = count > 0
        ece = expected_calibration_error(labels, probabilities, bins)
        line, = ax.plot(mean[inside], rate[inside], lw=1.4, label=f"{name} (ECE {ece:.3f})")
        ax.scatter(mean[inside], rate[inside], s=12 + 60 * count[inside] / count.max(), color=line.get_color())
    return save_figure(_unit_square(fig, ax, "mean predicted probability", "observed positive rate", title,
                                    "upper left"), path)


def _unit_square(fig: plt.Figure, ax: plt.Axes, xlabel: str, ylabel: str, title: str, legend: str) -> plt.Figure:
    """Axes over [0, 1] x [0, 1] with the dashed diagonal (chance ROC, perfect calibration)."""
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    return fig

"""Figures for reports (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retinassl.atomic import atomic_path  # noqa: E402
from retinassl.metrics.classification import roc_auc, roc_points  # noqa: E402


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
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    return save_figure(fig, path)

"""Masked-autoencoder reconstructions as a figure: one row per image, original | what the encoder saw
(hidden patches grey) | the reconstruction (predicted patches pasted into the visible ones), as the
MAE paper shows them (He et al. 2022, Fig. 2: "masked image, MAE reconstruction, ground truth")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinassl.figures.plots import plt, save_figure

COLUMNS = ("original", "visible patches", "reconstruction")
FIGURE_PREFIX = "reconstructions-"  # the report's gallery of them


def sample_rows(n_rows: int, images: int, seed: int) -> np.ndarray:
    """``images`` distinct row indices of ``n_rows`` (all when fewer), drawn with ``seed``, sorted."""
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=min(images, n_rows), replace=False))


def display_range(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The grey levels shown black and white: percentiles of the ORIGINAL image, so that all three
    panels of a row share one scale (a reconstruction brighter than its original looks brighter)."""
    lo, hi = np.percentile(image, [low, high])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def to_display(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(C, H, W)`` float (any normalisation) -> ``(H, W, 3)`` or ``(H, W)`` in [0, 1]."""
    out = np.clip((np.asarray(image, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return out[0] if out.shape[0] == 1 else np.moveaxis(out[:3], 0, -1)


def reconstruction_figure(originals: np.ndarray, visible: np.ndarray, reconstructed: np.ndarray,
                          hidden: np.ndarray, path: str | Path, title: str = "", captions: list[str] | None = None
                          ) -> Path:
    """Write the grid.

    Args:
        originals, visible, reconstructed: ``(N, C, H, W)`` in the network's input scale.
        hidden: ``(N, H, W)`` bool, the pixels of the hidden patches (shown mid-grey in the middle column).
        path: the PNG.
        title: the figure's title (e.g. the run's method, steps and loss).
        captions: one per row (image indices; never file names: they may name a patient).
    """
    n = len(originals)
    fig, axes = plt.subplots(n, 3, figsize=(7.2, 2.4 * n + 0.4), squeeze=False)
    for i in range(n):
        lo, hi = display_range(originals[i])
        panels = [to_display(originals[i], lo, hi), to_display(visible[i], lo, hi),
                  to_display(reconstructed[i], lo, hi)]
        panels[1] = np.where(hidden[i][..., None] if panels[1].ndim == 3 else hidden[i], 0.5, panels[1])
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(COLUMNS[j], fontsize=10)
        if captions:
            axes[i, 0].set_ylabel(captions[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)

"""What an image-level model looked at, on new images: one overlay per image for ``retinassl
predict --explain``, and the gallery of an external validation's worst misses.

The overlay depends on the saved kind: a whole-image ``classifier`` gets its Grad-CAM
(:mod:`retinassl.explain.gradcam`; Selvaraju et al. 2017), a ``patch-classifier`` (SSL-GAN and the
patch baselines) its patch-probability heatmap (:func:`retinassl.figures.heatmap.overlay`; Lecouat
et al. 2018 "overlaid the localized patch-level abnormality scores spatially onto the image").
The map is computed on the image the model saw (the recorded preprocessing: ``(S, S)``) and mapped
back through the image's recorded geometry (FOV crop, square padding, resize:
:func:`~retinassl.jobs.segment_inference.to_original`, the inverse that vessel evaluation at the
original resolution uses) onto the original photograph, so an overlay has the original image's size
and its heat lies on the same anatomy; outside the cropped field of view there is no heat. Overlays
are named and captioned by the image's id only, never by its source file or folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.data.cache import PreparedData
from retinassl.data.imageio import read_image
from retinassl.data.patches import patch_values_to_image
from retinassl.errors import DataError
from retinassl.explain.gradcam import GRADCAM_ALPHA, cam_model, explanation_maps
from retinassl.figures.heatmap import HEAT_ALPHA, SIGMA_FRACTION, blend
from retinassl.jobs.predict import ImageScorer
from retinassl.jobs.segment_inference import to_original



def heat_maps(scorer: ImageScorer, prepared: PreparedData, rows: Sequence[int],
              scored: pd.DataFrame | None = None) -> list[np.ndarray]:
    """One ``(S, S)`` map in [0, 1] per row, on the image the model saw: Grad-CAM of the explained
    output for a classifier, the patch probabilities spread over their cells and smoothed for a
    patch classifier.

    Args:
        scored: the rows' per-image table of :meth:`ImageScorer.score` when the caller has already
            scored them (``predict``: the ``patch_..`` probabilities are reused, not computed again).
    """
    rows = np.asarray(rows, dtype=int)
    if scorer.kind == "classifier":
        return [heat for heat, _ in explanation_maps(cam_model(scorer.model, scorer.task), prepared, rows)]
    if scorer.kind == "patch-classifier":
        table = scorer.score(prepared, rows)[1] if scored is None else scored
        probs = table[[c for c in table.columns if c.startswith("patch_")]].to_numpy(float)
        if len(probs) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(probs)} scored rows")
        grid, size = scorer.model.grid, prepared.config.size
        return [patch_values_to_image(p.reshape(grid, grid), size, size, sigma=SIGMA_FRACTION * size) for p in probs]
    raise ValueError(f"no overlay for a saved {scorer.kind} model")


def original_overlay(prepared: PreparedData, row: int, heat: np.ndarray, alpha: float) -> np.ndarray:
    """``heat`` (``(S, S)``, on the prepared image of ``row``) mapped back to the original image
    through its recorded geometry and blended onto it: ``(H, W, 3)`` uint8 at the original size.

    Raises:
        DataError: the image file no longer has the size it was prepared from.
    """
    geometry = prepared.entries[int(row)].geometry
    path = prepared.manifest.path(int(row))
    original = read_image(path, grayscale=prepared.config.channels == 1).array
    width, height = geometry.original_size
    if original.shape[:2] != (height, width):
        raise DataError(f"the image is {original.shape[1]}x{original.shape[0]} but was prepared from "
                        f"{width}x{height}: it changed since (clear the cache entry)", path=path)
    return blend(original, to_original(heat, geometry), alpha)


def image_overlays(scorer: ImageScorer, prepared: PreparedData, rows: Sequence[int],
                   scored: pd.DataFrame | None = None) -> list[np.ndarray]:
    """One overlay per row of ``prepared`` at the original image's size (``(H, W, 3)`` uint8): the
    :func:`heat_maps` mapped back to the original image (:func:`original_overlay`)."""
    alpha = GRADCAM_ALPHA if scorer.kind == "classifier" else HEAT_ALPHA
    return [original_overlay(prepared, int(row), heat, alpha)
            for row, heat in zip(rows, heat_maps(scorer, prepared, rows, scored))]


def worst_misses(labels: np.ndarray, scores: np.ndarray, threshold: float | None,
                 n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the ``n`` most confident false positives (negatives scored ``>= threshold``,
    highest score first) and false negatives (positives scored below it, lowest first). Without a
    threshold: the ``n`` highest-scored negatives and lowest-scored positives (the worst ranked).
    Ties keep row order."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    negatives, positives = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if threshold is not None:
        negatives = negatives[scores[negatives] >= threshold]
        positives = positives[scores[positives] < threshold]
    false_pos = negatives[np.argsort(-scores[negatives], kind="stable")][:n]
    false_neg = positives[np.argsort(scores[positives], kind="stable")][:n]
    return false_pos, false_neg


def misses_gallery(scorer: ImageScorer, prepared: PreparedData, labels: np.ndarray, scores: np.ndarray,
                   path: str | Path, n: int = 4, title: str = "", scored: pd.DataFrame | None = None) -> pd.DataFrame:
    """The overlays of the :func:`worst_misses` of ``prepared``'s rows (``labels``/``scores`` per
    row) in one PNG at ``path``: false positives in the first row, false negatives in the second,
    captions ``id``, label and score. Returns the picks (``id, label, score, miss, rank``; ``miss``
    is ``false_positive``/``false_negative``, or ``highest_negative``/``lowest_positive`` for a
    model without a threshold); no figure when there is no miss. ``scored``: the per-image table of
    :meth:`ImageScorer.score` of ``prepared``'s rows, reused for the overlays (see
    :func:`image_overlays`)."""
    from retinassl.figures.plots import plt, save_figure

    false_pos, false_neg = worst_misses(labels, scores, scorer.threshold, n)
    ids = prepared.manifest.frame["id"].astype(str).to_numpy()
    kinds = ("false_positive", "false_negative") if scorer.threshold is not None else \
        ("highest_negative", "lowest_positive")
    picks = pd.DataFrame(
        [{"id": ids[r], "label": int(labels[r]), "score": float(scores[r]), "miss": miss, "rank": k + 1}
         for miss, rows in zip(kinds, (false_pos, false_neg)) for k, r in enumerate(rows)],
        columns=["id", "label", "score", "miss", "rank"])
    if picks.empty:
        return picks
    chosen = np.concatenate([false_pos, false_neg])
    arts = image_overlays(scorer, prepared, chosen,
                          None if scored is None else scored.iloc[chosen].reset_index(drop=True))
    columns = max(len(false_pos), len(false_neg))
    fig, axes = plt.subplots(2, columns, figsize=(2.3 * columns, 5.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    what = "Grad-CAM" if scorer.kind == "classifier" else "patch heatmap"
    cut = "" if scorer.threshold is None else f" (threshold {scorer.threshold:.3g})"
    names = (f"false positives{cut}", f"false negatives{cut}") if scorer.threshold is not None else \
        ("highest-scored negatives", "lowest-scored positives")
    for k, pick in enumerate(picks.itertuples()):
        ax = axes[0 if pick.miss == kinds[0] else 1, pick.rank - 1]
        ax.imshow(arts[k])
        ax.set_title(f"{pick.id[-20:]}\nlabel {pick.label}, score {pick.score:.3g}", fontsize=7)
    for r, name in enumerate(names):
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=8)
    fig.suptitle(f"{what}: {title}" if title else what, fontsize=9)
    save_figure(fig, path)
    return picks

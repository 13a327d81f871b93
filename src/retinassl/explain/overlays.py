"""What an image-level model looked at, on new images: one overlay per image for ``retinassl
predict --explain``, and the gallery of an external validation's worst misses.

The overlay depends on the saved kind: a whole-image ``classifier`` gets its Grad-CAM
(:mod:`retinassl.explain.gradcam`; Selvaraju et al. 2017), a ``patch-classifier`` (SSL-GAN and the
patch baselines) its patch-probability heatmap (:func:`retinassl.figures.heatmap.overlay`; Lecouat
et al. 2018 "overlaid the localized patch-level abnormality scores spatially onto the image").
Overlays are drawn on the image the model saw (the recorded preprocessing: ``(S, S, 3)``) and named
and captioned by the image's id only, never by its source file or folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.data.cache import PreparedData
from retinassl.explain.gradcam import cam_model, gradcam_overlays
from retinassl.figures.heatmap import overlay
from retinassl.jobs.predict import ImageScorer


def image_overlays(scorer: ImageScorer, prepared: PreparedData, rows: Sequence[int],
                   scored: pd.DataFrame | None = None) -> list[np.ndarray]:
    """One ``(S, S, 3)`` uint8 overlay per row of ``prepared``: Grad-CAM of the explained output
    for a classifier, the smoothed patch probabilities for a patch classifier.

    Args:
        scored: the rows' per-image table of :meth:`ImageScorer.score` when the caller has already
            scored them (``predict``: the ``patch_..`` probabilities are reused, not computed again).
    """
    rows = np.asarray(rows, dtype=int)
    if scorer.kind == "classifier":
        return [art for art, _ in gradcam_overlays(cam_model(scorer.model, scorer.task), prepared, rows)]
    if scorer.kind == "patch-classifier":
        table = scorer.score(prepared, rows)[1] if scored is None else scored
        probs = table[[c for c in table.columns if c.startswith("patch_")]].to_numpy(float)
        if len(probs) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(probs)} scored rows")
        grid = scorer.model.grid
        return [overlay(np.asarray(prepared.entries[int(r)].image()), p.reshape(grid, grid))
                for r, p in zip(rows, probs)]
    raise ValueError(f"no overlay for a saved {scorer.kind} model")


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

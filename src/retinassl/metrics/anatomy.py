"""Where a patch classifier's image-level AUC is lost: the anatomy of its test patch logits.

The image score here is always the paper's sum of the 64 patch sigmoids (a classifier saved with
the ``tissue`` rule, :mod:`retinassl.metrics.image_score`, is analysed under the sum too), so how far
a patch AUC carries to the image level depends on whether patch errors are independent or shared by
all patches of an image. For one
cell's test logits ``(images, patches)``, the patch labels and the image labels:

- ``lesion_auc``: diseased vs lesion-free patches inside the diseased images (finding lesions);
- ``context_auc``: lesion-free patches of diseased images vs the patches of healthy images
  (scoring lesion-free tissue by the image it sits in);
- ``between_image_share``: the share of the variance of the healthy images' patch logits that lies
  between images (an image-wide offset, which the sum over patches cannot average away);
- ``independent_image_auc``: the image AUC of the same sum rule when every patch logit is redrawn
  from the cell's logits of patches with the same label: the same patch-level ROC with no
  image-wide offset (mean over draws);
- ``healthy_independent_image_auc``: only the healthy images' patch logits are redrawn, from the
  healthy images' patches (their image-wide offsets removed, the diseased images as observed);
- ``diseased_independent_image_auc``: only the diseased images' patch logits are redrawn, each from
  the diseased images' patches with the same label (how easy an image's lesions are no longer
  depends on the image: mild and severe eyes mixed; the healthy images as observed).

The two one-sided redraws say on which side of the ROC curve the image AUC is lost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retinassl.metrics.classification import roc_auc
from retinassl.metrics.image_score import image_scores

TEST_PATCH_LABELS = "test-patch-labels.csv"   # written into a sweep's run folder
ANATOMY_METRICS = ("image_auc", "independent_image_auc", "healthy_independent_image_auc",
                   "diseased_independent_image_auc", "patch_auc", "lesion_auc", "context_auc",
                   "between_image_share")
ANATOMY_TITLES = {  # column titles in reports and benchmark tables
    "image_auc": "image AUC",
    "independent_image_auc": "image AUC, independent patch errors",
    "healthy_independent_image_auc": "image AUC, healthy images' patches independent",
    "diseased_independent_image_auc": "image AUC, DR images' patches independent",
    "patch_auc": "patch AUC",
    "lesion_auc": "lesion AUC (inside DR images)",
    "context_auc": "context AUC (lesion-free DR vs healthy patches)",
    "between_image_share": "between-image share of healthy logits",
}


def between_image_share(logits: np.ndarray) -> float:
    """One-way ANOVA share of the variance of ``logits`` ``(images, patches)`` between images."""
    logits = np.asarray(logits, dtype=float)
    grand = logits.mean()
    total = ((logits - grand) ** 2).sum()
    between = logits.shape[1] * ((logits.mean(axis=1) - grand) ** 2).sum()
    return float(between / total) if total > 0 else float("nan")


def independent_image_auc(logits: np.ndarray, patch_labels: np.ndarray, image_labels: np.ndarray,
                          draws: int = 200, seed: int = 0, redraw: int | None = None) -> float:
    """Mean image AUC (sum of sigmoids) over ``draws`` redraws of patch logits, each independently.

    ``redraw=None``: every patch logit is redrawn from the logits of all patches with the same
    patch label. ``redraw=k``: only the patches of images labelled ``k`` are redrawn, from the
    patches of images labelled ``k`` with the same patch label; the other images keep their logits.
    """
    logits, patch_labels = np.asarray(logits, dtype=float), np.asarray(patch_labels).astype(int)
    image_labels = np.asarray(image_labels).astype(int)
    chosen = np.ones_like(patch_labels, dtype=bool)
    if redraw is not None:
        chosen[image_labels != redraw] = False
    rng = np.random.default_rng(seed)
    pools = {k: (chosen & (patch_labels == k), logits[chosen & (patch_labels == k)])
             for k in np.unique(patch_labels[chosen])}
    aucs = []
    for _ in range(draws):
        redrawn = logits.copy()
        for where, pool in pools.values():
            redrawn[where] = rng.choice(pool, size=int(where.sum()))
        aucs.append(roc_auc(image_labels, image_scores(redrawn)))
    return float(np.mean(aucs))


def logit_anatomy(logits: np.ndarray, patch_labels: np.ndarray, image_labels: np.ndarray,
                  draws: int = 200, seed: int = 0) -> dict[str, float]:
    """The :data:`ANATOMY_METRICS` of one cell's test logits ``(images, patches)``."""
    logits = np.array(logits, dtype=float)  # a writable copy (pandas may hand out read-only views)
    patch_labels = np.asarray(patch_labels).astype(int)
    image_labels = np.asarray(image_labels).astype(int)
    if logits.shape != patch_labels.shape or len(image_labels) != len(logits):
        raise ValueError(f"logits {logits.shape}, patch labels {patch_labels.shape} and "
                         f"{len(image_labels)} image labels do not match")
    diseased, healthy = image_labels == 1, image_labels == 0
    lesion_free = logits[diseased][patch_labels[diseased] == 0]
    healthy_patches = logits[healthy].reshape(-1)
    return {
        "image_auc": roc_auc(image_labels, image_scores(logits)),
        "independent_image_auc": independent_image_auc(logits, patch_labels, image_labels, draws, seed),
        "healthy_independent_image_auc": independent_image_auc(logits, patch_labels, image_labels,
                                                               draws, seed, redraw=0),
        "diseased_independent_image_auc": independent_image_auc(logits, patch_labels, image_labels,
                                                                draws, seed, redraw=1),
        "patch_auc": roc_auc(patch_labels.reshape(-1), logits.reshape(-1)),
        "lesion_auc": roc_auc(patch_labels[diseased].reshape(-1), logits[diseased].reshape(-1)),
        "context_auc": roc_auc(np.r_[np.ones(len(lesion_free)), np.zeros(len(healthy_patches))],
                               np.r_[lesion_free, healthy_patches]),
        "between_image_share": between_image_share(logits[healthy]),
    }


def _cell_arrays(frame: pd.DataFrame, labels_by_id: pd.DataFrame, cell: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch logits, patch labels (matched by ``id``) and image labels of one saved predictions table."""
    columns = [c for c in frame.columns if c.startswith("patch_")]
    missing = set(frame["id"]) - set(labels_by_id.index)
    if missing:
        raise ValueError(f"{cell}: no patch labels for test image(s) {sorted(missing)[:3]}")
    return (frame[columns].to_numpy(float), labels_by_id.loc[frame["id"], columns].to_numpy(int),
            frame["label"].to_numpy(int))


def anatomy_table(predictions: dict[tuple[str, int], list[pd.DataFrame]], patch_labels: pd.DataFrame,
                  draws: int = 200) -> pd.DataFrame:
    """Mean :data:`ANATOMY_METRICS` over the seeds of each ``(learner, labelled)`` cell.

    Args:
        predictions: ``(learner, n_labelled) -> [test predictions of each seed]`` (``id``,
            ``label``, ``patch_00`` ..), as the sweep saves them.
        patch_labels: ``id`` and ``patch_00`` .. of the test images (the sweep's
            ``test-patch-labels.csv``).
    """
    labels_by_id = patch_labels.set_index("id")
    rows = []
    for (learner, n_labelled), frames in predictions.items():
        cells = [logit_anatomy(*_cell_arrays(frame, labels_by_id, f"{learner} at {n_labelled} labels"), draws)
                 for frame in frames]
        means = pd.DataFrame(cells).mean()
        rows.append({"method": learner, "n_labelled": n_labelled, "cells": len(cells), **means.to_dict()})
    return pd.DataFrame(rows, columns=["method", "n_labelled", "cells", *ANATOMY_METRICS])


def diseased_image_table(predictions: dict[tuple[str, int], list[pd.DataFrame]], patch_labels: pd.DataFrame,
                         n_labelled: int) -> pd.DataFrame:
    """Per diseased test image (rows, by ``id``) and learner at ``n_labelled`` labels, means over
    seeds: ``"<learner>: healthy at or above"``, the share of the healthy test images whose image
    score is at or above its own (the images a learner misses score high here), and ``"<learner>:
    lesion vs healthy patches AUC"``, its lesion patches against all healthy images' patches (0.5:
    its lesions look like healthy tissue to the learner). The most missed images come first (by
    the mean over learners of their share of healthy images at or above)."""
    labels_by_id = patch_labels.set_index("id")
    out: dict[str, pd.Series] = {}
    for (learner, n), frames in sorted(predictions.items()):
        if n != n_labelled:
            continue
        beaten, lesion = [], []
        for frame in frames:
            logits, labels, image_labels = _cell_arrays(frame, labels_by_id, f"{learner} at {n} labels")
            scores = image_scores(logits)
            healthy, ids = image_labels == 0, frame["id"].to_numpy()[image_labels == 1]
            healthy_logits = logits[healthy].ravel()
            diseased = np.flatnonzero(image_labels == 1)
            beaten.append(pd.Series([(scores[healthy] >= scores[i]).mean() for i in diseased], index=ids))
            lesion.append(pd.Series([
                roc_auc(np.r_[np.ones(int(labels[i].sum())), np.zeros(len(healthy_logits))],
                        np.r_[logits[i][labels[i] == 1], healthy_logits]) for i in diseased], index=ids))
        out[f"{learner}: healthy at or above"] = pd.concat(beaten, axis=1).mean(axis=1)
        out[f"{learner}: lesion vs healthy patches AUC"] = pd.concat(lesion, axis=1).mean(axis=1)
    table = pd.DataFrame(out)
    missed = table[[c for c in table.columns if c.endswith(": healthy at or above")]].mean(axis=1)
    return table.loc[missed.sort_values(ascending=False, kind="stable").index]

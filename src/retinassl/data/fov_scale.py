"""Scale travels with the model: the field-of-view (FOV) diameter a model was trained at, and
preparing new images so that their FOV spans the same number of input pixels.

A model sees its training images at one scale: with ``crop_fov`` the FOV fills the input square
(its diameter is about ``preprocess.size``), without it (the vessel segmenter works at the native
scale) the diameter in input pixels is whatever the training camera gave. Saved models record the
median FOV diameter of their training images in input pixels (``fov_diameter`` in ``model.json``,
:func:`fov_record`); :func:`prepare_at_model_scale` prepares new images at the model's size,
measures their median FOV diameter, and when it differs by more than ``tolerance`` prepares them
again at the size that makes it match: ``size * recorded / measured``. Each step is logged. One size
serves a whole dataset (batches of a classifier need one size): images from cameras of different
scales in one call are warned about, and are best predicted one camera at a time.

The diameter of one FOV mask is its larger bounding-box side (:func:`fov_diameter`): a FOV cut off
at the top and bottom of the photograph (STARE, many fundus cameras) keeps its full width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retinassl.data.cache import PreparedData
from retinassl.data.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

#: Key of the recorded diameter in a saved model's ``model.json``.
FOV_KEY = "fov_diameter"
#: Relative difference in FOV diameter below which images are left at the model's size.
TOLERANCE = 0.03
MIN_SIZE, MAX_SIZE = 8, 8192


def fov_diameter(fov: np.ndarray) -> float:
    """The FOV diameter in pixels of a ``(H, W)`` bool mask: its larger bounding-box side (0 when
    the mask is empty)."""
    mask = np.asarray(fov, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0.0
    return float(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def median_fov_diameter(prepared: PreparedData, rows: Sequence[int] | np.ndarray | None = None) -> float | None:
    """Median FOV diameter (input pixels) of the cached images ``rows`` (default: all); None when no
    image has a FOV."""
    picked = range(len(prepared)) if rows is None else (int(r) for r in rows)
    values = [fov_diameter(np.asarray(prepared.entries[r].fov())) for r in picked]
    values = [v for v in values if v > 0]
    return float(np.median(values)) if values else None


def fov_record(prepared: PreparedData, rows: Sequence[int] | np.ndarray | None = None) -> dict[str, Any]:
    """``{"fov_diameter": ...}`` of the training images ``rows``, for a saved model's meta (empty
    when no image has a FOV)."""
    value = median_fov_diameter(prepared, rows)
    return {} if value is None else {FOV_KEY: round(value, 2)}


def matched_size(size: int, recorded: float, measured: float) -> int:
    """The input size at which images whose FOV spans ``measured`` pixels at ``size`` span
    ``recorded`` pixels."""
    return int(min(MAX_SIZE, max(MIN_SIZE, round(size * recorded / measured))))


def prepare_at_model_scale(prepare: Callable[[PreprocessConfig], PreparedData], config: PreprocessConfig,
                           recorded: float | None, *, enabled: bool = True,
                           tolerance: float = TOLERANCE) -> PreparedData:
    """Prepare images with ``config`` (the model's preprocessing) and, when ``enabled`` and the
    model records its training FOV diameter ``recorded``, again at the size that makes their median
    FOV diameter match it (:func:`matched_size`) if it differs by more than ``tolerance``.

    Args:
        prepare: preprocessing config -> prepared images (the caller's cache, manifest, workers).
        config: the model's preprocessing (with the caller's overrides).
        recorded: the model's ``fov_diameter`` (None: saved before it was recorded).
        enabled: False keeps ``config.size`` (``--no-match-scale``, or an explicit size).
    """
    prepared = prepare(config)
    if not enabled:
        log.info("scale: images prepared at size %d as given (FOV matching off)", config.size)
        return prepared
    if recorded is None:
        log.info("scale: the model records no training FOV diameter (saved before it was recorded): "
                 "images prepared at its size %d", config.size)
        return prepared
    diameters = [d for d in (fov_diameter(np.asarray(e.fov())) for e in prepared.entries) if d > 0]
    measured = float(np.median(diameters)) if diameters else None
    if diameters and max(diameters) > (1 + 3 * tolerance) * min(diameters):
        log.warning("scale: these images' FOV spans %.0f to %.0f px at size %d (several cameras?): one "
                    "size is chosen for their median; predict each camera's images separately to "
                    "match every one", min(diameters), max(diameters), config.size)
    if measured is None:
        log.warning("scale: no field of view found in these images: kept at the model's size %d",
                    config.size)
        return prepared
    if abs(measured / recorded - 1) <= tolerance:
        log.info("scale: these images' FOV spans %.0f px at size %d, the model's training images "
                 "%.0f px: size kept", measured, config.size, recorded)
        return prepared
    size = matched_size(config.size, recorded, measured)
    log.info("scale: these images' FOV spans %.0f px at size %d, the model's training images %.0f px: "
             "rescaled to size %d so that they match (--no-match-scale or an explicit size to keep %d)",
             measured, config.size, recorded, size, config.size)
    rescaled = prepare(config.model_copy(update={"size": size}))
    after = median_fov_diameter(rescaled)
    log.info("scale: FOV diameter now %.0f px (model: %.0f px)", after or 0.0, recorded)
    return rescaled


__all__ = ["FOV_KEY", "TOLERANCE", "fov_diameter", "median_fov_diameter", "fov_record", "matched_size",
           "prepare_at_model_scale"]

"""Evaluating a vessel segmenter: probabilities computed on the cached image are mapped back to the
original pixel grid (:func:`~retinassl.jobs.segment_inference.to_original`) and compared with the
original mask files inside the FOV (the dataset's FOV mask, or one estimated by thresholding with
``preprocess.fov_threshold`` when the dataset has none, as for STARE); per-image metrics, pooled
metrics with bootstrap intervals over images, the second observer, and the results-table rows.
:func:`labelled_rows` picks the images with a vessel mask (for training and evaluation alike).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retinassl.data.cache import PreparedData
from retinassl.data.field_of_view import fov_mask
from retinassl.data.fov_scale import prepare_at_model_scale
from retinassl.data.imageio import read_image, read_mask
from retinassl.data.loading import prepare
from retinassl.data.manifest import is_missing
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.vessel_inputs import InputConfig, network_input
from retinassl.errors import DataError
from retinassl.figures.vessels import vessel_panel
from retinassl.io.results import result_row
from retinassl.jobs.segment_config import EvalDatasetConfig
from retinassl.jobs.segment_inference import (InferenceConfig, save_mask_png, save_probability_png,
                                              sliding_window_probabilities, to_original)
from retinassl.metrics.classification import roc_auc
from retinassl.metrics.segmentation import (BINARY_METRICS, bootstrap_mean, bootstrap_over_images,
                                            confusion_counts, metrics_from_counts, segmentation_metrics)

log = logging.getLogger(__name__)


# -- rows ------------------------------------------------------------------------------------------
def _has(frame: pd.DataFrame, row: int, column: str) -> bool:
    return column in frame.columns and not is_missing(frame.at[row, column])


def labelled_rows(prepared: PreparedData, split: str | None, exclude_flag: str | None = None) -> np.ndarray:
    """Rows of ``split`` (all when None/empty) that have a vessel mask, minus flagged ones."""
    frame = prepared.manifest.frame
    keep = []
    for r in range(len(frame)):
        if split and str(frame.at[r, "split"]) != split:
            continue
        if not _has(frame, r, "mask_vessels"):
            continue
        if exclude_flag and exclude_flag in frame.columns and not is_missing(frame.at[r, exclude_flag]) \
                and int(float(frame.at[r, exclude_flag])) == 1:
            continue
        keep.append(r)
    return np.asarray(keep, dtype=int)


# -- evaluation ------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Per-image metrics (``table``) and dataset-level values (``summary``: pooled metrics, their
    bootstrap intervals over images, per-image means), and the same for the second observer."""

    table: pd.DataFrame
    summary: dict[str, float]
    observer: dict[str, float] = field(default_factory=dict)


def native_masks(prepared: PreparedData, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Original-resolution image, FOV, vessel truth (None without a mask) and 2nd observer
    (None without) of one row; ``(image, fov, truth, observer)``."""
    manifest = prepared.manifest
    frame = manifest.frame
    image = read_image(manifest.path(row, "image")).array
    size = (image.shape[1], image.shape[0])
    if _has(frame, row, "mask_fov"):
        fov = read_mask(manifest.path(row, "mask_fov"), expected_size=size)
    else:
        fov = fov_mask(image, prepared.config.fov_threshold, prepared.config.fov_background)
    truth = read_mask(manifest.path(row, "mask_vessels"), expected_size=size) \
        if _has(frame, row, "mask_vessels") else None
    observer = read_mask(manifest.path(row, "mask_vessels_2"), expected_size=size) \
        if _has(frame, row, "mask_vessels_2") else None
    return image, fov, truth, observer


def predict_row(model: torch.nn.Module, prepared: PreparedData, row: int, input_config: InputConfig,
                inference: InferenceConfig) -> tuple[np.ndarray, float]:
    """Probabilities of one cached image on the original pixel grid (0 outside the FOV), and the
    inference seconds."""
    entry = prepared.entries[row]
    fov = np.asarray(entry.fov())
    x = torch.from_numpy(network_input(np.asarray(entry.image()), fov, input_config))
    start = time.perf_counter()
    prob = sliding_window_probabilities(model, x, inference)[0].numpy()
    seconds = time.perf_counter() - start
    return to_original(prob * fov, entry.geometry), seconds


def evaluate_segmenter(model: torch.nn.Module, prepared: PreparedData, rows: np.ndarray,
                       input_config: InputConfig, inference: InferenceConfig, *,
                       predictions_dir: Path | None = None, figures_dir: Path | None = None,
                       figure_prefix: str = "vessels-", n_figures: int = 0, n_boot: int = 2000,
                       seed: int = 0) -> EvalResult:
    """Metrics inside the FOV at the original resolution for ``rows`` (each with a vessel mask).

    Writes ``<id>-prob.png`` / ``<id>-vessels.png`` into ``predictions_dir`` and the first
    ``n_figures`` overlays into ``figures_dir`` when given.
    """
    model.eval()
    records, counts, observer_counts = [], [], []
    pooled_truth, pooled_prob = [], []
    for k, r in enumerate(rows):
        r = int(r)
        ident = str(prepared.manifest.frame.at[r, "id"])
        image, fov, truth, observer = native_masks(prepared, r)
        if truth is None:
            raise DataError("no vessel mask to evaluate against", path=prepared.manifest.name, row=r,
                            item=ident)
        prob, seconds = predict_row(model, prepared, r, input_config, inference)
        if prob.shape != truth.shape:
            raise DataError(f"prediction {prob.shape} and mask {truth.shape} differ in size",
                            path=prepared.manifest.path(r, "mask_vessels"), row=r, item=ident)
        pred = prob >= inference.threshold
        metrics = segmentation_metrics(prob, truth, fov, inference.threshold)
        c = confusion_counts(pred, truth, fov)
        counts.append(c)
        records.append({"id": ident, **metrics, **dict(zip(("tp", "fp", "fn", "tn"), c.tolist())),
                        "seconds": seconds})
        pooled_truth.append(truth[fov])
        pooled_prob.append(prob[fov])
        if observer is not None:
            observer_counts.append(confusion_counts(observer, truth, fov))
        if predictions_dir is not None:
            save_probability_png(predictions_dir / f"{ident}-prob.png", prob)
            save_mask_png(predictions_dir / f"{ident}-vessels.png", pred)
        if figures_dir is not None and k < n_figures:
            from retinassl.figures.heatmap import save_png

            save_png(figures_dir / f"{figure_prefix}{ident}.png",
                     vessel_panel(image, truth, prob, fov, inference.threshold))
    table = pd.DataFrame(records)
    counts_arr = np.stack(counts)
    summary = metrics_from_counts(counts_arr)
    summary["auc"] = roc_auc(np.concatenate(pooled_truth), np.concatenate(pooled_prob))
    for name in BINARY_METRICS + ("auc",):
        summary[f"{name}_image_mean"] = float(table[name].mean())
    if n_boot > 0 and len(rows) > 1:
        for name, (low, high) in bootstrap_over_images(counts_arr, n_boot, seed=seed).items():
            summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = low, high
        summary["auc_image_mean_ci_low"], summary["auc_image_mean_ci_high"] = \
            bootstrap_mean(table["auc"].to_numpy(), n_boot, seed=seed)
    summary["seconds_per_image"] = float(table["seconds"].mean())
    summary["n_images"] = float(len(rows))
    observer_summary: dict[str, float] = {}
    if observer_counts:
        obs = np.stack(observer_counts)
        observer_summary = metrics_from_counts(obs)
        if n_boot > 0 and len(obs) > 1:
            for name, (low, high) in bootstrap_over_images(obs, n_boot, seed=seed).items():
                observer_summary[f"{name}_ci_low"], observer_summary[f"{name}_ci_high"] = low, high
        observer_summary["n_images"] = float(len(obs))
    return EvalResult(table, summary, observer_summary)


def result_rows(result: EvalResult, *, experiment: str, dataset: str, init: str, protocol: str,
                n_labelled: int, fraction: float, seed: int,
                extra: dict[str, float] | None = None) -> list[dict]:
    """Results-table rows of one evaluation (and of the second observer, method ``second_observer``)."""
    task = f"vessels:{dataset}"
    rows = [result_row(experiment=experiment, task=task, method="segmentation", init=init,
                       protocol=protocol, fraction=fraction, n_labelled=n_labelled, seed=seed,
                       metric=k, value=v) for k, v in {**result.summary, **(extra or {})}.items()]
    rows += [result_row(experiment=experiment, task=task, method="second_observer", init="human",
                        protocol="annotation", metric=k, value=v) for k, v in result.observer.items()]
    return rows


def prepare_eval_dataset(spec: EvalDatasetConfig, default: PreprocessConfig, recorded: float | None = None,
                         match_scale: bool = False) -> tuple[PreparedData, np.ndarray]:
    """Cache an evaluation dataset and pick its rows; with ``match_scale``, at the size that makes
    its field of view span ``recorded`` input pixels (the model's training images':
    :func:`~retinassl.data.fov_scale.prepare_at_model_scale`)."""
    config = spec.preprocess or default
    if match_scale:
        prepared = prepare_at_model_scale(lambda c: prepare(spec.data, c), config, recorded)
    else:
        prepared = prepare(spec.data, config)
    rows = labelled_rows(prepared, spec.split, spec.exclude_flag)
    if len(rows) == 0:
        raise DataError(f"evaluation dataset {spec.name!r} has no images with vessel masks"
                        + (f" in split {spec.split!r}" if spec.split else ""), path=prepared.manifest.name)
    return prepared, rows

"""Vessel-segmentation runs: train a U-Net, evaluate it inside the FOV at the original resolution
(on the training dataset's test split and on other datasets), write PNG predictions, and the
label-fraction curve over initialisations.

A trained model is a saved model of kind ``segmenter`` (:mod:`retinassl.io.saved_model`: the
U-Net's ``encoder.*`` and ``decoder.*`` weights; its JSON has the encoder architecture and
arguments, decoder arguments, the preprocessing and input settings and the inference settings), so
``retinassl segment predict/evaluate`` need nothing else.

Evaluation never resamples the annotations: probabilities computed on the cached image are mapped
back to the original pixel grid (:func:`~retinassl.jobs.segment_inference.to_original`)
and compared with the original mask files inside the FOV (the dataset's FOV mask, or one estimated
by thresholding with ``preprocess.fov_threshold`` when the dataset has none, as for STARE).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from retinassl.atomic import write_text
from retinassl.io.saved_model import is_saved_model, load_state_strict, module_state, read_model, save_model
from retinassl.models.checkpoint import encoder_meta, save_encoder
from retinassl.models.initialize import init_label
from retinassl.config import DataConfig, EngineConfig, ModelConfig, Section, to_yaml
from retinassl.data.cache import PreparedData
from retinassl.data.imageio import read_image, read_mask
from retinassl.data.loading import drop_test_leaks, prepare
from retinassl.data.manifest import is_missing
from retinassl.data.field_of_view import fov_mask
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.splits import nested_subsets
from retinassl.engine.fit import FitResult, fit
from retinassl.errors import ConfigError, DataError
from retinassl.methods.base import seeded_method
from retinassl.models import build_encoder
from retinassl.models.segmentation import UNet
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.methods.vessel_segmentation import VesselSegmentation
from retinassl.data.vessel_inputs import InputConfig, VesselImageDataset, load_vessel_images, network_input
from retinassl.figures.vessels import vessel_panel
from retinassl.jobs.segment_inference import (InferenceConfig, save_mask_png, save_probability_png,
                                     sliding_window_probabilities, to_original)
from retinassl.metrics.segmentation import (BINARY_METRICS, bootstrap_mean, bootstrap_over_images,
                                   confusion_counts, metrics_from_counts, segmentation_metrics)
from retinassl.metrics.classification import roc_auc

log = logging.getLogger(__name__)

# -- configuration ---------------------------------------------------------------------------------
class TrainImagesConfig(Section):
    """Which images train, and what an epoch is.

    Attributes:
        split: manifest split of the training images (rows with a ``mask_vessels`` file).
        n_images: label budget: the first ``n_images`` of a seeded random order of the training
            images (nested: the 2 images of a seed contain its 1 image, and so on); None: all.
        subset_seed: seed of that order (None: the run seed).
        samples_per_epoch: image draws per epoch; each draw gives ``patches_per_image`` patches,
            so an epoch has the same number of patches whatever ``n_images`` is.
        freeze_encoder_epochs: train only the decoder for the first epochs (pretrained encoders).
    """

    split: str = "train"
    n_images: int | None = Field(None, ge=1)
    subset_seed: int | None = None
    samples_per_epoch: int = Field(40, ge=1)
    freeze_encoder_epochs: int = Field(0, ge=0)


class SegmentModelConfig(ModelConfig):
    """The U-Net's encoder (:class:`~retinassl.config.ModelConfig` with a small ``unet`` default;
    ``in_channels`` defaults to the input's channels)."""

    arch: str = "unet"
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"channels": [16, 32, 64, 128]})


class SegmentEngineConfig(EngineConfig):
    """:class:`~retinassl.config.EngineConfig` whose batch is a few whole images (each gives
    ``method.patches_per_image`` patches)."""

    batch_size: int = Field(4, ge=1)


class SegmentPreprocessConfig(PreprocessConfig):
    """:class:`~retinassl.data.preprocess.PreprocessConfig` that keeps the original scale by
    default (no FOV crop, ``size`` = the images' longer side), so vessel masks are not resampled."""

    size: int = Field(584, ge=8, le=8192)
    crop_fov: bool = False
    normalize: Literal["max", "imagenet", "image", "unit"] = "unit"


class EvalDatasetConfig(Section):
    """A dataset to evaluate a trained model on (cross-dataset evaluation).

    Attributes:
        name: short name used in the results table (``task = vessels:<name>``) and file names.
        data: where the images come from (any source: ``stare``, ``glob``, ``manifest``...).
        preprocess: its caching (None: the training preprocessing; defaults as for training:
            no FOV crop, ``size`` 584, so set ``size`` to the images' longer side to keep their
            scale, or smaller to shrink them towards the training images' scale).
        split: only rows of this split (None: every row with a vessel mask).
        exclude_flag: leave out rows whose value in this manifest column is 1 (e.g. STARE's
            ``resized``).
    """

    name: str
    data: DataConfig
    preprocess: SegmentPreprocessConfig | None = None
    split: str | None = None
    exclude_flag: str | None = None


class SegmentConfig(Section):
    """A vessel-segmentation run (``retinassl segment train``; preset ``drive-vessels``)."""

    name: str = "vessels"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    preprocess: SegmentPreprocessConfig = SegmentPreprocessConfig()
    input: InputConfig = InputConfig()
    model: SegmentModelConfig = SegmentModelConfig()
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "segmentation"})
    train: TrainImagesConfig = TrainImagesConfig()
    engine: SegmentEngineConfig = SegmentEngineConfig()
    inference: InferenceConfig = InferenceConfig()
    test_split: str = "test"
    evaluate_on: list[EvalDatasetConfig] = Field(default_factory=list)
    figures: int = Field(4, ge=0)
    bootstrap: int = Field(2000, ge=0)
    save_predictions: bool = True


# -- model building and the segmenter directory ----------------------------------------------------
@dataclass
class Segmenter:
    """A trained U-Net with what it needs to preprocess and infer."""

    model: UNet
    meta: dict[str, Any]

    @property
    def input(self) -> InputConfig:
        return InputConfig.model_validate(self.meta["input"])

    @property
    def preprocess(self) -> SegmentPreprocessConfig:
        return SegmentPreprocessConfig.model_validate(self.meta["preprocess"])

    @property
    def inference(self) -> InferenceConfig:
        return InferenceConfig.model_validate(self.meta["inference"])


def build_vessel_method(config: SegmentConfig, steps_per_epoch: int) -> tuple[VesselSegmentation, dict]:
    """The segmentation method around the encoder ``config.model`` asks for; returns it and the
    encoder's ``{"arch", "kwargs", "kind"}``."""
    model = config.model
    if model.init == "scratch" and "in_channels" not in model.kwargs:
        model = model.model_copy(update={"kwargs": {**model.kwargs, "in_channels": config.input.num_channels}})
    params = dict(config.method)
    name = params.pop("name", "segmentation")
    if name != VesselSegmentation.name:
        raise ConfigError(f"method.name must be {VesselSegmentation.name!r} for segmentation, not {name!r}")
    params["freeze_encoder_steps"] = config.train.freeze_encoder_epochs * steps_per_epoch
    method, initial = seeded_method(model, params, name, config.seed)
    if initial.encoder.in_channels not in (config.input.num_channels, 3):
        raise ConfigError(f"the encoder takes {initial.encoder.in_channels} channel(s) but input."
                          f"channels is {config.input.channels!r}")
    return method, {"arch": initial.arch, "kwargs": initial.kwargs, "kind": initial.kind}  # type: ignore[return-value]


def save_segmenter(directory: Path, method: VesselSegmentation, encoder_info: dict, config: SegmentConfig,
                   extra: dict[str, Any] | None = None) -> Path:
    """Save the U-Net as a model of kind ``segmenter``; returns the directory."""
    mcfg = method.config
    unet = method.unet()
    meta = {**encoder_meta(unet.encoder, arch=encoder_info["arch"], kwargs=encoder_info["kwargs"],
                           preprocess=config.preprocess.model_dump(mode="json"), method=method.name,
                           config=config.model_dump(mode="json")),
            "init": config.model.init,
            "decoder": {"out_channels": 1, "decoder_channels": mcfg.decoder_channels,
                        "stem_channels": mcfg.stem_channels},
            "input": config.input.model_dump(mode="json"),
            "inference": config.inference.model_dump(mode="json"), **(extra or {})}
    return save_model(directory, "segmenter", module_state(unet), meta)


def load_segmenter(path: str | Path) -> Segmenter:
    """Rebuild a U-Net from a segmenter directory (or a run directory holding ``segmenter/``)."""
    path = Path(path)
    if is_saved_model(path / "segmenter"):
        path = path / "segmenter"
    saved = read_model(path, kinds=("segmenter",),
                       hint="a segmenter directory is written by `retinassl segment train` into <run>/segmenter")
    meta = saved.meta
    encoder = build_encoder(meta["arch"], **meta["kwargs"])
    dec = meta["decoder"]
    model = UNet(encoder, dec["out_channels"], dec["decoder_channels"], dec["stem_channels"])
    load_state_strict(model, saved.state, source=saved.weights_file)
    return Segmenter(model.eval(), meta)


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


def training_rows(prepared: PreparedData, train: TrainImagesConfig, seed: int) -> np.ndarray:
    """The labelled training rows, or a seeded nested subset of ``train.n_images`` of them."""
    rows = labelled_rows(prepared, train.split)
    if len(rows) == 0:
        raise DataError(f"no {train.split!r} images with a vessel mask (mask_vessels)",
                        path=prepared.manifest.name)
    if train.n_images is None:
        return rows
    subset_seed = seed if train.subset_seed is None else train.subset_seed
    picked = nested_subsets(np.zeros(len(rows), dtype=int), [train.n_images], subset_seed)[train.n_images]
    return rows[picked]


# -- training --------------------------------------------------------------------------------------
@dataclass
class TrainedSegmenter:
    method: VesselSegmentation
    encoder_info: dict
    rows: np.ndarray
    fit: FitResult
    n_available: int


def train_segmenter(config: SegmentConfig, run: RunDir, prepared: PreparedData,
                    resume: bool = False) -> TrainedSegmenter:
    """Train the U-Net of ``config`` on its training images; checkpoints go to ``run``."""
    rows = training_rows(prepared, config.train, config.seed)
    if config.test_split and config.test_split != config.train.split:
        rows = drop_test_leaks(prepared.manifest, rows, labelled_rows(prepared, config.test_split))
    images = load_vessel_images(prepared, rows, config.input)
    dataset = VesselImageDataset(images, config.train.samples_per_epoch)
    batch = min(config.engine.batch_size, len(dataset))
    steps_per_epoch = max(1, len(dataset) // batch)
    method, info = build_vessel_method(config, steps_per_epoch)
    log.info("training a U-Net (%s encoder, %s) on %d image(s): %d steps/epoch x %d patches",
             info["arch"], info["kind"], len(rows), steps_per_epoch,
             batch * method.config.patches_per_image)
    result = fit(method, dataset, config=config.engine, run=run, seed=config.seed, resume=resume)
    method.eval()
    n_available = len(labelled_rows(prepared, config.train.split))
    return TrainedSegmenter(method, info, rows, result, n_available)


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
        fov = fov_mask(image, prepared.config.fov_threshold)
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


def prepare_eval_dataset(spec: EvalDatasetConfig, default: PreprocessConfig) -> tuple[PreparedData, np.ndarray]:
    """Cache an evaluation dataset and pick its rows."""
    prepared = prepare(spec.data, spec.preprocess or default)
    rows = labelled_rows(prepared, spec.split, spec.exclude_flag)
    if len(rows) == 0:
        raise DataError(f"evaluation dataset {spec.name!r} has no images with vessel masks"
                        + (f" in split {spec.split!r}" if spec.split else ""), path=prepared.manifest.name)
    return prepared, rows


def run_segment_train(config: SegmentConfig, run: RunDir, resume: bool = False) -> dict[str, float]:
    """``retinassl segment train``: train, save the segmenter and the encoder, evaluate on the test
    split and on ``evaluate_on``, write predictions, overlays and results into ``run``."""
    run.write_config(to_yaml(config))
    prepared = prepare(config.data, config.preprocess)
    if prepared.skipped:  # --skip-bad: listed in run.json and the report
        run.update_status(skipped=[{"id": i, "problem": p} for i, p in prepared.skipped])
    prepared.manifest.save(run.path / "manifest.csv")
    trained = train_segmenter(config, run, prepared, resume=resume)
    method = trained.method
    save_segmenter(run.path / "segmenter", method, trained.encoder_info, config,
                   {"train_ids": [str(prepared.manifest.frame.at[int(r), "id"]) for r in trained.rows]})
    save_encoder(run.encoder_dir, method.encoder, arch=trained.encoder_info["arch"],
                 kwargs=trained.encoder_info["kwargs"], preprocess=config.preprocess.model_dump(mode="json"),
                 method="segmentation", config=config.model_dump(mode="json"),
                 data_fingerprint=prepared.manifest.subset(trained.rows).fingerprint())
    model = method.unet().eval()
    protocol = "finetune" if config.train.freeze_encoder_epochs == 0 else \
        f"freeze{config.train.freeze_encoder_epochs}+finetune"
    common = dict(experiment=config.name, init=init_label(config.model.init), protocol=protocol,
                  n_labelled=len(trained.rows), fraction=len(trained.rows) / trained.n_available,
                  seed=config.seed)
    train_extra = {"train_seconds": trained.fit.seconds, "train_steps": float(trained.fit.batches)}
    metrics: dict[str, float] = {}
    targets: list[tuple[str, PreparedData, np.ndarray]] = []
    test_rows = labelled_rows(prepared, config.test_split)
    dataset_name = str(config.data.source)
    if len(test_rows):
        targets.append((dataset_name, prepared, test_rows))
    for spec in config.evaluate_on:
        other, rows = prepare_eval_dataset(spec, config.preprocess)
        targets.append((spec.name, other, rows))
    for name, data, rows in targets:
        log.info("evaluating on %s (%d images)", name, len(rows))
        result = evaluate_segmenter(
            model, data, rows, config.input, config.inference,
            predictions_dir=run.predictions / name if config.save_predictions else None,
            figures_dir=run.report_dir / "figures", figure_prefix=f"vessels-{name}-",
            n_figures=config.figures, n_boot=config.bootstrap, seed=config.seed)
        write_text(run.predictions / f"{name}-per-image.csv", result.table.to_csv(index=False))
        append_results(run.results_file, result_rows(result, dataset=name, extra=train_extra, **common))
        metrics.update({f"{name}_{k}": v for k, v in result.summary.items()
                        if k in ("dice", "sensitivity", "specificity", "accuracy", "auc")})
        if result.observer:
            metrics[f"{name}_second_observer_dice"] = result.observer["dice"]
    metrics.update(train_extra)
    return metrics


def run_segment_evaluate(segmenter: Segmenter, spec: EvalDatasetConfig, run: RunDir, *,
                         n_figures: int = 4, n_boot: int = 2000, seed: int = 0,
                         save_predictions: bool = True) -> EvalResult:
    """``retinassl segment evaluate``: one trained model on one dataset, results into ``run``."""
    prepared, rows = prepare_eval_dataset(spec, segmenter.preprocess)
    result = evaluate_segmenter(segmenter.model, prepared, rows, segmenter.input, segmenter.inference,
                                predictions_dir=run.predictions / spec.name if save_predictions else None,
                                figures_dir=run.report_dir / "figures", figure_prefix=f"vessels-{spec.name}-",
                                n_figures=n_figures, n_boot=n_boot, seed=seed)
    write_text(run.predictions / f"{spec.name}-per-image.csv", result.table.to_csv(index=False))
    config = segmenter.meta.get("config", {})
    n_train = len(segmenter.meta.get("train_ids", []))
    append_results(run.results_file, result_rows(
        result, experiment=str(config.get("name", "vessels")), dataset=spec.name,
        init=init_label(str(segmenter.meta.get("init", "scratch"))), protocol="finetune",
        n_labelled=n_train, fraction=float("nan"), seed=int(config.get("seed", 0))))
    return result


def predict_images(segmenter: Segmenter, prepared: PreparedData, out_dir: Path) -> list[Path]:
    """Probability and binary PNGs (original resolution) of every image of ``prepared``."""
    written = []
    inference = segmenter.inference
    for r in range(len(prepared)):
        ident = str(prepared.manifest.frame.at[r, "id"])
        prob, _ = predict_row(segmenter.model, prepared, r, segmenter.input, inference)
        written.append(save_probability_png(out_dir / f"{ident}-prob.png", prob))
        written.append(save_mask_png(out_dir / f"{ident}-vessels.png", prob >= inference.threshold))
    return written


# -- the label-fraction curve ----------------------------------------------------------------------

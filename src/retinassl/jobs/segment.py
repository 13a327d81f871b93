"""Vessel-segmentation runs: train a U-Net, evaluate it inside the FOV at the original resolution
(on the training dataset's test split and on other datasets), write PNG predictions; the cells of
the label-fraction curve over initialisations (:mod:`retinassl.sweeps.vessel_curve`).

A trained model is a saved model of kind ``segmenter`` (:mod:`retinassl.io.saved_model`: the
U-Net's ``encoder.*`` and ``decoder.*`` weights; its JSON has the encoder architecture and
arguments, decoder arguments, the preprocessing and input settings and the inference settings), so
``retinassl segment predict/evaluate`` need nothing else.

The run's configuration is :mod:`retinassl.jobs.segment_config`; evaluation, at the original
resolution, is :mod:`retinassl.jobs.segment_evaluation`.

Evaluation never resamples the annotations: probabilities computed on the cached image are mapped
back to the original pixel grid (:func:`~retinassl.jobs.segment_inference.to_original`)
and compared with the original mask files inside the FOV (the dataset's FOV mask, or one estimated
by thresholding with ``preprocess.fov_threshold`` when the dataset has none, as for STARE).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinassl.atomic import write_text
from retinassl.config import to_yaml
from retinassl.data.cache import PreparedData
from retinassl.data.fov_scale import FOV_KEY, fov_record
from retinassl.data.loading import drop_test_leaks, prepare
from retinassl.data.splits import nested_subsets
from retinassl.data.vessel_inputs import InputConfig, VesselImageDataset, load_vessel_images
from retinassl.engine.fit import FitResult, fit
from retinassl.errors import ConfigError, DataError
from retinassl.io.results import append_results
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import is_saved_model, load_state_strict, module_state, read_model, save_model
from retinassl.jobs.segment_config import EvalDatasetConfig, SegmentConfig, SegmentPreprocessConfig, TrainImagesConfig
from retinassl.jobs.segment_evaluation import (EvalResult, evaluate_segmenter, labelled_rows, predict_row,
                                               prepare_eval_dataset, result_rows)
from retinassl.jobs.segment_inference import InferenceConfig, save_mask_png, save_probability_png
from retinassl.methods.base import seeded_method
from retinassl.methods.vessel_segmentation import VesselSegmentation
from retinassl.models import build_encoder
from retinassl.models.checkpoint import encoder_meta, save_encoder
from retinassl.models.initialize import init_label
from retinassl.models.segmentation import UNet

log = logging.getLogger(__name__)


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
                   {"train_ids": [str(prepared.manifest.frame.at[int(r), "id"]) for r in trained.rows],
                    "precision": trained.fit.precision,  # bf16 and float32 train different models
                    **fov_record(prepared, trained.rows)})  # the scale predict/evaluate match
    save_encoder(run.encoder_dir, method.encoder, arch=trained.encoder_info["arch"],
                 kwargs=trained.encoder_info["kwargs"], preprocess=config.preprocess.model_dump(mode="json"),
                 method="segmentation", config=config.model_dump(mode="json"),
                 data_fingerprint=prepared.manifest.subset(trained.rows).fingerprint(),
                 extra={"precision": trained.fit.precision})
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
                         save_predictions: bool = True, match_scale: bool = False) -> EvalResult:
    """``retinassl segment evaluate``: one trained model on one dataset, results into ``run``
    (``match_scale``: at the model's training field-of-view diameter, :func:`prepare_eval_dataset`)."""
    prepared, rows = prepare_eval_dataset(spec, segmenter.preprocess, segmenter.meta.get(FOV_KEY), match_scale)
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

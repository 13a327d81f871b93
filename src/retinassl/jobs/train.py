"""``retinassl train``: supervised training of an encoder on whole images or on patches, then test
evaluation (AUC), predictions, the encoder checkpoint and the results table, all in a run directory.

With ``task.kind: patch`` this is the supervised patch classifier of Lecouat et al. 2018 (patch
labels from lesion masks, image score = sum of patch sigmoids), trained by
:func:`retinassl.jobs.patch_training.train_patch_classifier` (the one patch-classifier training,
here on patches read from the cache); with ``task.kind: image`` it is plain image classification
(e.g. referable DR, or the normal/abnormal "Fundus" pretraining of Jang et al. 2024).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from retinassl.atomic import write_text
from retinassl.models.checkpoint import save_encoder
from retinassl.models.initialize import EncoderInput, check_encoder_inputs, model_encoder_inputs
from retinassl.models.published import with_published
from retinassl.config import DataConfig, EngineConfig, ModelConfig, Section, to_yaml
from retinassl.data.augment import check_acquisition_inputs
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.cache import PreparedData
from retinassl.data.datasets import ImageDataset, PatchDataset, lesion_mask
from retinassl.data.loading import Splits, ensure_splits, prepare
from retinassl.engine.fit import fit
from retinassl.metrics.classification import roc_auc
from retinassl.figures.heatmap import overlay, save_png
from retinassl.methods.base import seeded_method
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.jobs.patch_config import LearnerConfig, refuse_tta
from retinassl.jobs.patch_training import train_patch_classifier
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.metrics.aggregate import predict_patch_logits
from retinassl.metrics.image_score import image_scores

log = logging.getLogger(__name__)


class TaskConfig(Section):
    """What is predicted.

    Attributes:
        kind: ``image`` (one prediction per image) or ``patch`` (patch grid, labels from lesion
            masks, image score = sum of patch sigmoids).
        label: manifest label column (``abnormal``, ``dr_grade``, ``dme``...).
        positive_from: for ``image`` tasks, binarise the label as ``label >= positive_from``
            (e.g. referable DR: ``label: dr_grade``, ``positive_from: 2``); None keeps it.
        grid: patches per side (patch tasks).
        patch_size: side of a patch as fed to the network (patch tasks; 32 in Lecouat et al.).
        min_pixels: lesion pixels that make a patch diseased.
        heatmaps: test images to render as patch-heatmap overlays in the report.
    """

    kind: Literal["image", "patch"] = "patch"
    label: str = "abnormal"
    positive_from: int | None = None
    grid: int = Field(8, ge=1)
    patch_size: int = Field(32, ge=8)
    min_pixels: int = Field(1, ge=1)
    heatmaps: int = Field(6, ge=0)


class TrainConfig(Section):
    """A supervised training run (``retinassl train``).

    ``val_fraction``: when the manifest has train and test images but no validation split (IDRiD's
    official split), this share of the training images (patient-grouped, stratified by the label)
    becomes the validation split: best-epoch selection, early stopping and the saved classifier's
    operating threshold are chosen on it, never on the test images. 0: no validation split.
    """

    name: str = "train"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig(size=256)
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "supervised"})
    engine: EngineConfig = EngineConfig()
    val_fraction: float = Field(0.15, ge=0, lt=1)

    def encoder_inputs(self) -> list[EncoderInput]:
        """``model.init`` and the inputs it will see (:func:`~retinassl.models.initialize.check_encoder_inputs`)."""
        return model_encoder_inputs(self)

    @model_validator(mode="after")
    def _check_augmentation_inputs(self) -> TrainConfig:
        check_acquisition_inputs(self.method, self.preprocess, "method", self.model.weights)
        if self.task.kind == "patch":  # refused before anything runs, not when its learner is built
            refuse_tta(self.method)
        return self


def _patch_rows(prepared: PreparedData, rows: np.ndarray) -> np.ndarray:
    """Rows that can be patch-labelled (have lesion masks, or are labelled healthy)."""
    from retinassl.data.manifest import is_missing

    frame = prepared.manifest.frame
    cols = [c for c in ("mask_MA", "mask_HE", "mask_EX", "mask_SE") if c in frame.columns]
    keep = []
    for r in rows:
        has_mask = any(not is_missing(frame.at[r, c]) for c in cols)
        healthy = "abnormal" in frame.columns and not is_missing(frame.at[r, "abnormal"]) and \
            int(float(frame.at[r, "abnormal"])) == 0
        if has_mask or healthy:
            keep.append(r)
    return np.asarray(keep, dtype=int)


def run_train(config: TrainConfig, run: RunDir, resume: bool = False,
              prepared: PreparedData | None = None) -> dict[str, float]:
    """Train, evaluate on the test split, and write everything into ``run``.

    Returns:
        test metrics (``image_auc``, and ``patch_auc`` for patch tasks).
    """
    config = with_published(config)  # model.weights: the published model's architecture and inputs
    check_encoder_inputs(config)  # before the config is recorded
    run.write_config(to_yaml(config))
    prepared = prepared if prepared is not None else prepare(config.data, config.preprocess)
    if prepared.skipped:
        run.update_status(skipped=[{"id": i, "problem": p} for i, p in prepared.skipped])
    prepared.manifest.save(run.path / "manifest.csv")
    splits = carve_validation(prepared, ensure_splits(prepared, config.task.label, config.seed),
                              config.task.label, config.val_fraction, config.seed)
    name = config.method.get("name", "supervised")
    task = config.task
    if task.kind == "patch":
        train_rows, val_rows = _patch_rows(prepared, splits.train), _patch_rows(prepared, splits.val)
        train = PatchDataset(prepared, task.grid, task.patch_size, train_rows, min_pixels=task.min_pixels)
        val = PatchDataset(prepared, task.grid, task.patch_size, val_rows, min_pixels=task.min_pixels)
        log.info("patches: %d train (%d diseased), %d val", len(train), int(train.labels.sum()), len(val))
        learner = LearnerConfig(method={**config.method, "name": name}, model=config.model,
                                engine=config.engine, patch_size=task.patch_size, balance=False)
        trained = train_patch_classifier(learner, train, grid=task.grid, seed=config.seed, run=run,
                                         val=val if len(val) else None, resume=resume)
        method, result, classifier = trained.method, trained.fit, trained.classifier
        arch, kwargs, init = trained.arch, trained.kwargs, trained.init
    else:
        method, initial = seeded_method(config.model, config.method, name, config.seed)
        label_map = None if task.positive_from is None else (lambda g, t=task.positive_from: int(g >= t))
        full = ImageDataset(prepared, task.label, label_map)
        train_images = torch.utils.data.Subset(full, splits.train.tolist())
        val_images = torch.utils.data.Subset(full, splits.val.tolist())
        result = fit(method, train_images, config=config.engine, run=run, seed=config.seed,
                     val=val_images if len(val_images) else None, resume=resume)
        method.eval()
        classifier, arch, kwargs, init = None, initial.arch, initial.kwargs, initial.kind
    save_encoder(run.encoder_dir, method.encoder, arch=arch,
                 kwargs=kwargs, preprocess=config.preprocess.model_dump(),
                 method=name, config=config.model_dump(mode="json"),
                 data_fingerprint=prepared.manifest.subset(splits.train).fingerprint(),
                 extra={"precision": result.precision})  # bf16 and float32 train different models
    metrics = evaluate_test(method, prepared, splits, config, run)
    save_trained_classifier(method, arch, kwargs, prepared, splits, config, run.path / "classifier",
                            classifier, precision=result.precision)
    metrics["train_seconds"] = result.seconds
    metrics["train_batches"] = float(result.batches)
    rows = [result_row(experiment=config.name, task=f"{task.kind}:{task.label}", method=name,
                       init=init,
                       protocol="finetune", n_labelled=len(splits.train), seed=config.seed,
                       metric=k, value=v) for k, v in metrics.items()]
    append_results(run.results_file, rows)
    return metrics


def carve_validation(prepared: PreparedData, splits: Splits, label: str, fraction: float, seed: int) -> Splits:
    """``splits`` with a validation split carved from its training rows when it has none (see
    :class:`TrainConfig`); the manifest's ``split`` column records it."""
    from retinassl.data.splits import stratified_group_split

    if len(splits.val) or fraction <= 0 or len(splits.train) < 4:
        return splits
    frame = prepared.manifest.frame
    train = np.asarray(splits.train, dtype=int)
    labels = prepared.manifest.labels(label)[train]
    labels = np.where(np.isnan(labels.astype(float)), -1, labels).astype(int)
    names = stratified_group_split(labels, frame["patient"].astype(str).to_numpy()[train],
                                   {"val": fraction, "train": 0}, seed)
    val, train = train[names == "val"], train[names == "train"]
    frame.loc[val, "split"] = "val"
    log.info("no validation split: %d of the %d training images (patient-grouped) validate", len(val),
             len(val) + len(train))
    return Splits(train, val, splits.test)


def save_trained_classifier(method: Any, arch: str, kwargs: dict[str, Any], prepared: PreparedData,
                            splits: Splits, config: TrainConfig, directory: Path,
                            classifier: PatchClassifier | None = None, precision: str | None = None) -> Path | None:
    """Save what `retinassl predict` applies to new images: a whole-image binary ``classifier`` or
    (patch tasks) the ``patch-classifier`` ``classifier``, with its operating point (the Youden
    threshold on the validation images, and the threshold reaching 90 % sensitivity) and its
    validation calibration error (and the ``precision`` it trained with, when given)."""
    from retinassl.jobs.finetune import predict, save_classifier
    from retinassl.metrics.classification import expected_calibration_error, operating_point
    from retinassl.metrics.tasks import TaskSpec

    task = config.task
    if getattr(method, "name", "") != "supervised" or method.config.task != "binary":
        return None
    val = np.asarray(splits.val, dtype=int)
    labels = prepared.manifest.labels(task.label)[val] if len(val) else np.zeros(0)
    if task.kind == "image" and task.positive_from is not None:
        labels = (labels >= task.positive_from).astype(int)
    from retinassl.data.fov_scale import fov_record

    extra: dict[str, Any] = fov_record(prepared, splits.train)  # the scale predict matches
    if precision is not None:
        extra["precision"] = precision  # bf16 and float32 train different models
    if task.kind == "image":
        scores = predict(method, prepared, val) if len(val) else np.zeros(0)
    else:
        labels = (labels > 0).astype(int)
        scores = image_scores(predict_patch_logits(classifier, PatchDataset(
            prepared, task.grid, task.patch_size, val, labelled=False))) if len(val) else np.zeros(0)
    if len(np.unique(labels)) == 2:
        extra["operating_point"] = operating_point(labels, scores)
        if task.kind == "image":
            extra["calibration"] = {"ece": expected_calibration_error(labels, scores), "n_val": float(len(val))}
    else:
        log.warning("the validation split has one class: the saved classifier has no operating threshold")
    preprocess = config.preprocess.model_dump(mode="json")
    if task.kind == "image":
        spec = TaskSpec(name=task.label, kind="binary", label=task.label, positive_from=task.positive_from)
        return save_classifier(directory, method, arch=arch, kwargs=kwargs,
                               preprocess=preprocess, task=spec, extra=extra)
    assert classifier is not None, "a binary supervised method leaves a patch classifier"
    return classifier.save(directory, arch=arch, kwargs=kwargs, method="supervised",
                           preprocess=preprocess, config=config.model_dump(mode="json"), extra=extra)


@torch.no_grad()
def evaluate_test(method: Any, prepared: PreparedData, splits: Splits, config: TrainConfig,
                  run: RunDir) -> dict[str, float]:
    """Test-set predictions (CSV), AUCs, and heatmap overlays for patch tasks."""
    task = config.task
    rows = splits.test if len(splits.test) else splits.val
    frame = prepared.manifest.frame
    if len(rows) == 0:
        return {}
    labels_all = prepared.manifest.labels(task.label)
    labels = labels_all[rows]
    if task.kind == "image" and task.positive_from is not None:
        labels = (labels >= task.positive_from).astype(int)
    metrics: dict[str, float] = {}
    model = method.forward
    if task.kind == "patch":
        patches = PatchDataset(prepared, task.grid, task.patch_size, rows, labelled=False)
        logits = predict_patch_logits(model, patches)
        scores = image_scores(logits)
        image_labels = (labels > 0).astype(int) if task.label != "abnormal" else labels
        metrics["image_auc"] = roc_auc(image_labels, scores)
        labelable = _patch_rows(prepared, rows)
        pos = np.isin(rows, labelable)
        if pos.any():
            lab = PatchDataset(prepared, task.grid, task.patch_size, rows[pos], min_pixels=task.min_pixels)
            metrics["patch_auc"] = roc_auc(lab.labels, logits[pos].reshape(-1))
        table = pd.DataFrame({"id": frame["id"].to_numpy()[rows], "label": image_labels,
                              "score": scores})
        for j in range(logits.shape[1]):
            table[f"patch_{j:02d}"] = logits[:, j]
        _heatmap_gallery(prepared, rows, logits, image_labels, scores, task, run, method.name)
    else:
        dataset = ImageDataset(prepared)
        outs = []
        for start in range(0, len(rows), 64):
            batch = torch.stack([dataset[int(r)]["image"] for r in rows[start:start + 64]])
            outs.append(method.scores(batch).float())
        scores = torch.cat(outs).numpy()
        if scores.ndim == 1:
            metrics["image_auc"] = roc_auc(labels, scores)
        table = pd.DataFrame({"id": frame["id"].to_numpy()[rows], "label": labels})
        if scores.ndim == 1:
            table["score"] = scores
        else:
            for k in range(scores.shape[1]):
                table[f"score_{k}"] = scores[:, k]
    write_text(run.predictions / f"{config.name}-{method.name}-test.csv", table.to_csv(index=False))
    log.info("test: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def _heatmap_gallery(prepared: PreparedData, rows: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                     scores: np.ndarray, task: TaskConfig, run: RunDir, method_name: str) -> None:
    """Overlays of the highest-scoring diseased and healthy test images."""
    if task.heatmaps == 0:
        return
    order = np.argsort(-scores)
    chosen = [i for i in order if labels[i] == 1][: (task.heatmaps + 1) // 2]
    chosen += [i for i in order if labels[i] == 0][: task.heatmaps // 2]
    figures = run.report_dir / "figures"
    for i in chosen:
        row = int(rows[i])
        entry = prepared.entries[row]
        image = np.asarray(entry.image())
        probs = 1 / (1 + np.exp(-logits[i].reshape(task.grid, task.grid)))
        art = overlay(image, probs, mask=lesion_mask(prepared, row))
        ident = prepared.manifest.frame.at[row, "id"]
        save_png(figures / f"heatmap-{method_name}-{ident}.png", art)

"""Full fine-tuning: the ``supervised`` method (encoder + linear head, every weight trained) started
from an encoder checkpoint or from scratch, trained by :func:`retinassl.engine.fit.fit` with early
stopping on a validation split carved from the labelled subset.

Jang et al. 2024 fine-tune every pretrained model "with early stopping to prevent overfitting".
With label fractions down to a handful of images, the validation split has to come out of the
labelled subset itself (the test images are never looked at): :func:`~retinassl.data.splits.carve_validation` takes about
``val_fraction`` of each class's patients (at least one) when every class of the task has at
least two; otherwise there is no validation split, and the run trains for its step budget and
keeps its last weights. The monitored quantity is the validation loss by default (continuous, so
it still ranks checkpoints when a validation split of three images makes the AUC jump between 0.5
and 1).

Training length is given in epochs over the fitted rows, with a floor of ``min_steps`` optimizer
steps (5 images at batch size 32 are one step per epoch) and a ceiling of ``max_steps``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from retinassl.io.saved_model import load_state_strict, module_state, read_model, save_model
from retinassl.models.checkpoint import encoder_meta
from retinassl.models.registry import build_encoder
from retinassl.config import EngineConfig, ModelConfig, Section
from retinassl.data.cache import PreparedData
from retinassl.data.datasets import ImageDataset
from retinassl.data.splits import carve_validation
from retinassl.engine.fit import fit
from retinassl.methods.base import build_method, seeded_method
from retinassl.methods.supervised import Supervised
from retinassl.io.rundir import RunDir
from retinassl.jobs.features import embed
from retinassl.jobs.probe import ProbeConfig, probe_head
from retinassl.metrics.tasks import TaskSpec

log = logging.getLogger(__name__)

class FinetuneConfig(Section):
    """Fine-tuning settings (the engine settings are separate: :class:`EngineConfig`).

    Attributes:
        lr: peak AdamW learning rate (cosine schedule with 5 % warm-up).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up over exactly this many optimizer steps before the cosine
            decay (None: 5 % of the run); MAE/RETFound fine-tune with a few epochs of warm-up.
        layer_decay: layer-wise learning-rate decay for ViT encoders (None: off, as for ResNets;
            0.65 is RETFound's and MAE's ViT-L value, 0.75 MAE's ViT-B value): block ``i`` of ``d``
            trains at ``lr * layer_decay ** (d - i)``, the patch/position embedding at ``lr *
            layer_decay ** (d + 1)``, the final norm and head at ``lr`` (see
            :mod:`retinassl.models.vit_transfer`).
        augment: ``none``, ``dihedral`` or ``affine`` (see the ``supervised`` method).
        tta: test-time augmentation of the scores: ``none``, ``flips`` or ``dihedral`` (the
            ``supervised`` method's; recorded with a saved classifier, so ``retinassl predict`` applies it).
        dropout: dropout before the head.
        epochs: passes over the fitted rows.
        min_steps: at least this many optimizer steps, whatever the subset size.
        max_steps: at most this many.
        val_fraction: share of each class's patients carved out for validation.
        val_every_steps: validate about this often (in steps; at least once per epoch).
        patience: stop after this many validations without improvement (0: never).
        monitor: ``loss`` (validation loss, min) or ``auc`` (binary tasks, max).
        class_balance: binary tasks: weight positives by negatives / positives of the fitted rows.
        head_init: ``random`` (the head drawn from the seed) or ``probe``: the head starts as the
            linear probe of the initial encoder's embeddings of the fitted rows (LP-FT, Kumar et al.
            2022: with few labels, gradients of a random head distort pretrained features before the
            head is any good; the probe's ``C`` chosen by inner cross-validation, as in ``probe``,
            its classes weighted as the loss weighs them (``class_balance``)). The probe is fitted on
            eval-mode embeddings, so its batch-norm layers are frozen by default (``batch_norm``).
        batch_norm: ``batch`` or ``frozen`` (the batch-norm layers keep the running statistics they
            start with; see the ``supervised`` method); None: ``frozen`` with ``head_init: probe``
            (training then starts at the probe's logits: with batch statistics a scratch ResNet-18's
            first logits were hundreds of times the probe's), ``batch`` otherwise.
    """

    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int | None = Field(None, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1)
    augment: Literal["none", "dihedral", "affine"] = "dihedral"
    tta: Literal["none", "flips", "dihedral"] = "none"
    dropout: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(20, ge=1)
    min_steps: int = Field(30, ge=1)
    max_steps: int = Field(2000, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    val_every_steps: int = Field(10, ge=1)
    patience: int = Field(5, ge=0)
    monitor: Literal["loss", "auc"] = "loss"
    class_balance: bool = True
    head_init: Literal["random", "probe"] = "random"
    batch_norm: Literal["batch", "frozen"] | None = None

    def batch_norm_mode(self) -> Literal["batch", "frozen"]:
        """The ``supervised`` method's ``batch_norm``: as set, or frozen when the head starts at the probe."""
        if self.batch_norm is not None:
            return self.batch_norm
        return "frozen" if self.head_init == "probe" else "batch"


@dataclass
class FinetuneResult:
    """Test scores, the trained model and what the run did."""

    scores: np.ndarray
    method: Supervised
    fit_rows: np.ndarray
    val_rows: np.ndarray
    steps: int
    seconds: float
    best: dict[str, float]
    precision: str  # the Lightning precision it trained with (recorded with a saved classifier)


def build_classifier(model: ModelConfig, task: TaskSpec, prepared: PreparedData,
                     config: FinetuneConfig, seed: int, pos_weight: float | None = None) -> tuple[Supervised, Any]:
    """The ``supervised`` method around the initial encoder of ``model``; scratch weights and the
    head's initialisation are drawn from ``seed`` (not from the global RNG state)."""
    params = {**task.supervised_params(prepared.manifest), "lr": config.lr,
              "weight_decay": config.weight_decay, "augment": config.augment, "tta": config.tta,
              "dropout": config.dropout, "schedule": "cosine", "pos_weight": pos_weight,
              "warmup_steps": config.warmup_steps, "layer_decay": config.layer_decay,
              "batch_norm": config.batch_norm_mode()}
    method, initial = seeded_method(model, params, "supervised", seed)
    if config.monitor == "loss" or task.kind != "binary":
        method.monitor = ("loss", "min")
    return method, initial


def start_from_probe(method: Supervised, prepared: PreparedData, rows: Sequence[int], task: TaskSpec,
                     seed: int, probe: ProbeConfig | None = None,
                     never_held_out: np.ndarray | None = None) -> None:
    """Set the head of ``method`` to the linear probe of its encoder's (eval-mode) embeddings of
    ``rows`` (:func:`~retinassl.jobs.probe.probe_head` with the settings ``probe``, default
    :class:`~retinassl.jobs.probe.ProbeConfig`), its classes weighted as the loss weighs them:
    balanced when the binary loss has a ``pos_weight`` (the weights' ratio is then the same). Its
    ``C`` is chosen on folds of the rows' patients, never validating on the ``never_held_out`` ones
    (``(N,)`` bool over ``prepared``'s rows)."""
    fc = method.head.fc
    rows = np.asarray(rows, dtype=int)
    features = embed(method.encoder, prepared.subset(rows)).astype(np.float64)
    balanced = method.config.task == "binary" and method.config.pos_weight is not None
    config = (probe or ProbeConfig()).model_copy(update={"class_weight": "balanced" if balanced else "none"})
    kept = None if never_held_out is None else np.asarray(never_held_out, dtype=bool)[rows]
    weight, bias = probe_head(features, task.targets(prepared.manifest)[rows], task, fc.out_features,
                              config, seed=seed, groups=prepared.manifest.patients[rows], always_fitted=kept)
    with torch.no_grad():
        fc.weight.copy_(torch.as_tensor(weight, dtype=fc.weight.dtype))
        fc.bias.copy_(torch.as_tensor(bias, dtype=fc.bias.dtype))


@torch.no_grad()
def predict(method: Supervised, prepared: PreparedData, rows: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Scores of ``rows`` (float32, eval mode): ``(M,)`` binary, ``(M, K)`` otherwise."""
    method.eval()
    dataset = ImageDataset(prepared)
    rows = [int(r) for r in rows]
    out = []
    for start in range(0, len(rows), batch_size):
        batch = torch.stack([dataset[r]["image"] for r in rows[start:start + batch_size]])
        out.append(method.scores(batch).float().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def finetune(model: ModelConfig, prepared: PreparedData, train_rows: Sequence[int],
             test_rows: Sequence[int], task: TaskSpec, config: FinetuneConfig, engine: EngineConfig,
             workdir: str | Path, seed: int, resume: bool = False,
             probe: ProbeConfig | None = None, never_held_out: np.ndarray | None = None) -> FinetuneResult:
    """Fine-tune on ``train_rows`` (a validation split is carved from them) and score ``test_rows``.

    Args:
        model: the encoder and its initialisation (``init``: ``scratch``, an encoder checkpoint
            directory, or external weights).
        prepared: the images; ``train_rows``/``test_rows`` index its rows, which must all carry
            the task's labels.
        task: the downstream task.
        config: fine-tuning settings; engine: the engine's (``max_epochs``, ``max_steps`` and
            ``patience`` are set from ``config``).
        workdir: the run directory of this training (checkpoints, logs).
        seed: seeds the initialisation, the validation split, data order and augmentation.
        resume: continue from the newest checkpoint in ``workdir``.
        probe: the linear probe's settings for ``head_init: probe`` (the sweep's ``probe``).
        never_held_out: ``(N,)`` bool over ``prepared``'s rows: images never carved into the
            validation split, nor their patients' (those whose labels or masks the encoder's
            pretraining read: early stopping on them would score its memory;
            :func:`~retinassl.sweeps.transfer_data.annotated_in_pretraining`), nor validated on by
            the inner folds that choose the ``C`` of a ``head_init: probe`` head.
    """
    train_rows = np.asarray(train_rows, dtype=int)
    manifest = prepared.manifest
    targets = task.targets(manifest)
    strata = (targets.max(axis=1) if targets.ndim == 2 else targets)[train_rows]
    groups = manifest.patients[train_rows]
    kept = None if never_held_out is None else np.asarray(never_held_out, dtype=bool)[train_rows]
    fit_pos, val_pos = carve_validation(strata, groups, config.val_fraction, seed, kept)
    fit_rows, val_rows = train_rows[fit_pos], train_rows[val_pos]
    pos_weight = None
    if task.kind == "binary" and config.class_balance:
        y = targets[fit_rows]
        if 0 < y.sum() < len(y):
            pos_weight = float((len(y) - y.sum()) / y.sum())
    method, _ = build_classifier(model, task, prepared, config, seed, pos_weight)
    if config.head_init == "probe":  # a resumed run's checkpoint then replaces it
        start_from_probe(method, prepared, fit_rows, task, seed, probe, never_held_out)
    label = task.dataset_label(manifest)
    train_ds = ImageDataset(prepared.subset(fit_rows), label, task.label_map())
    val_ds = ImageDataset(prepared.subset(val_rows), label, task.label_map()) if len(val_rows) else None
    batch = min(engine.batch_size, len(fit_rows))
    per_epoch = max(1, len(fit_rows) // batch)
    steps = int(min(config.max_steps, max(config.min_steps, config.epochs * per_epoch)))
    val_every = max(1, int(round(config.val_every_steps / per_epoch)))
    engine = engine.model_copy(update={"max_epochs": math.ceil(steps / per_epoch), "max_steps": steps,
                                       "val_every_n_epochs": val_every,
                                       "patience": config.patience if val_ds is not None else 0})
    run = RunDir(Path(workdir))
    run.path.mkdir(parents=True, exist_ok=True)
    result = fit(method, train_ds, config=engine, run=run, seed=seed, val=val_ds, resume=resume)
    scores = predict(method, prepared, np.asarray(test_rows, dtype=int))
    return FinetuneResult(scores, method, fit_rows, val_rows, result.batches, result.seconds, result.best,
                          result.precision)


# -- saved classifiers (for Grad-CAM) --------------------------------------------------------------
def save_classifier(directory: str | Path, method: Supervised, *, arch: str, kwargs: dict[str, Any],
                    preprocess: dict[str, Any], task: TaskSpec, extra: dict[str, Any] | None = None) -> Path:
    """The fine-tuned encoder and its head as a saved model of kind ``classifier``; its JSON records
    the task so that :func:`load_classifier` rebuilds encoder + head exactly."""
    meta = encoder_meta(method.encoder, arch=arch, kwargs=kwargs, preprocess=preprocess, method="supervised",
                        extra={"task": task.model_dump(mode="json"),
                               "supervised": method.config.model_dump(mode="json"), **(extra or {})})
    state = {**module_state(method.encoder, "encoder."), **module_state(method.head, "head.")}
    return save_model(directory, "classifier", state, meta)


def load_classifier(directory: str | Path) -> tuple[Supervised, TaskSpec, dict[str, Any]]:
    """Rebuild a classifier saved by :func:`save_classifier`; returns ``(method, task, meta)``."""
    saved = read_model(directory, kinds=("classifier",),
                       hint="a classifier is saved by fine-tuning (`retinassl evaluate finetune`)")
    meta = saved.meta
    encoder = build_encoder(meta["arch"], **meta["kwargs"])
    load_state_strict(encoder, saved.part("encoder."), saved.weights_file)
    task = TaskSpec.model_validate(meta["task"])
    method = build_method("supervised", meta["supervised"], encoder)
    load_state_strict(method.head, saved.part("head."), saved.weights_file)
    method.eval()
    return method, task, meta


def remove_workdir(workdir: str | Path) -> None:
    """Delete a finished training's checkpoints and logs (the predictions are kept elsewhere)."""
    shutil.rmtree(workdir, ignore_errors=True)

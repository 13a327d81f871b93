"""Training one patch classifier (a *learner*: SSL-GAN or a supervised baseline) through the
engine, and handing back its patch classifier: :func:`train_patch_classifier`, used by
``retinassl train`` (patch task, patches read from the cache) and, through :func:`train_learner`
(a labelled subset of the training images, patches held in memory), by ``retinassl semisup train``
and the ``ssl-gan`` sweep; :func:`save_learner` is how both save what they trained (the same
saved model whichever command made it).

- ``ssl-gan``: one dataset whose item ``i`` is unlabelled patch ``i`` (every patch of every
  training image, labelled or not, plus the pool's) with a labelled patch cycled beside it
  (:class:`~retinassl.data.patch_bank.SemiSupervisedPatches`); windows carry a context margin
  for the random crops.
- ``supervised`` (the ConvNet and ResNet34 baselines of Lecouat et al. 2018, "trained on the
  labelled patches only"): the labelled patches, with BCE ``pos_weight`` = negatives / positives
  when ``balance`` (Table 5, "balanced class-weighting"). An epoch cycles through them until it
  has shown as many patches as the training cohort has (the length of an SSL-GAN epoch), so
  epochs, validations and checkpoints come at the same pace for every label count.
  With a pool (``use_pool``), the pool's images join as image-level labelled multiple-instance
  bags (:class:`~retinassl.data.patch_bank.PatchesAndBags`; the method's ``bag_weight``):
  images with a grade but no lesion masks. Each bag adds one item (of 64 patches) to the epoch.

Encoders and the methods around them (heads, generator) are built under a fixed torch seed
(PyTorch's default layer initialisation draws from the global generator), so a learner's result
depends only on its seed, not on which cells a sweep worker trained before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from retinassl.data.fov_scale import fov_record
from retinassl.engine.fit import FitResult, fit
from retinassl.errors import ConfigError
from retinassl.methods.base import Method, seeded_method
from retinassl.io.rundir import RunDir
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.jobs.patch_config import LearnerConfig
from retinassl.data.patch_bank import (LabelledPatches, PatchBank, PatchesAndBags, SemiSupervisedPatches,
                                      collate_patches_and_bags, concat_banks, in_field_of_view)
from retinassl.jobs.patch_data import PatchData

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """A trained patch learner: its method (with every network), classifier (None for a method that
    leaves no binary patch classifier), engine result, the encoder's registry name and arguments
    (what rebuilds it) and how it was initialised (:func:`~retinassl.models.initialize.init_kind`)."""

    method: Method
    classifier: PatchClassifier | None
    fit: FitResult
    arch: str
    kwargs: dict
    init: str = "scratch"


def _learner_method(learner: LearnerConfig, seed: int, pos_weight: float | None = None) -> tuple[Method, Any]:
    """The learner's method and its :class:`~retinassl.models.initialize.InitialEncoder` (see
    :func:`build_learner_method`)."""
    params = dict(learner.method)
    name = str(params["name"])
    if name == "ssl-gan":
        params.setdefault("init_seed", seed)
        params.setdefault("patch_size", learner.patch_size)
        if params.get("balance_classes") and pos_weight is not None:
            params.setdefault("class_weights", (1.0, pos_weight))
    elif name == "supervised" and pos_weight is not None and learner.balance:
        params.setdefault("pos_weight", pos_weight)
    return seeded_method(learner.model, params, name, seed)


def build_learner_method(learner: LearnerConfig, seed: int,
                         pos_weight: float | None = None) -> tuple[Method, str, dict]:
    """The learner's method around a freshly built (or ``model.init``-loaded) encoder,
    deterministic for a seed; with the encoder's arch and kwargs. ``pos_weight`` (negatives /
    positives among the labelled patches) becomes a ``supervised`` learner's BCE ``pos_weight``
    when ``learner.balance``, and an ``ssl-gan``'s class weights when its ``balance_classes``."""
    method, built = _learner_method(learner, seed, pos_weight)
    return method, built.arch, built.kwargs


def _pos_weight(labels: np.ndarray | None) -> float | None:
    """Negatives / positives among patch ``labels`` (None when one class is absent)."""
    if labels is None or len(labels) == 0:
        return None
    positives = float(np.mean(labels))
    return (1 - positives) / positives if 0 < positives < 1 else None


def _validation(data: PatchData, learner: LearnerConfig, seed: int) -> Dataset | None:
    if not learner.val_patches or len(data.val) == 0:
        return None
    bank = data.bank("val", learner.patch_size, 0)
    by_image = learner.method.get("select_metric") == "image_auc"
    if by_image:
        if learner.val_patches < len(bank):
            raise ConfigError(f"learner {learner.method_name}: select_metric image_auc scores whole validation "
                              f"images, so it needs all {len(bank)} validation patches (val_patches "
                              f"{learner.val_patches}: set it to at least {len(bank)})")
        if len(np.unique(data.labels(data.val))) < 2:
            raise ConfigError(f"learner {learner.method_name}: select_metric image_auc needs validation images "
                              f"of both classes; the {len(data.val)} validation images hold one")
        if learner.image_score != "sum":
            raise ConfigError(f"learner {learner.method_name}: select_metric image_auc scores validation images "
                              f"with the sum rule; image_score {learner.image_score} would test them otherwise")
    if learner.val_patches >= len(bank):  # every patch: the images are scored too (image_auc)
        return LabelledPatches(bank, image_labels=data.labels(data.val))
    full = LabelledPatches(bank)
    rng = np.random.default_rng([seed, 7])
    return Subset(full, np.sort(rng.choice(len(full), learner.val_patches, replace=False)).tolist())


def training_info(trained: Trained) -> dict[str, float]:
    """What a training reports beside its classifier: seconds, optimizer steps, the epoch of the
    validation pass whose weights it ended with (``selected_epoch``, 0-based) and that pass's
    validation metrics (``selected_val_<metric>``, e.g. the SSL-GAN's ``selected_val_patch_auc``,
    the supervised learners' ``selected_val_auc``: what a recipe is chosen on; both absent when it
    kept its last weights), and the method's :meth:`~retinassl.methods.base.Method.health` (for the
    SSL-GAN, how varied its generator's samples are)."""
    best = trained.fit.best
    selected = {"selected_epoch": float(best["epoch"]),
                **{f"selected_val_{k}": float(v) for k, v in best.items() if k != "epoch"}} if "epoch" in best else {}
    return {"train_seconds": trained.fit.seconds, "train_steps": float(trained.fit.batches),
            **selected, **trained.method.health()}


def train_patch_classifier(learner: LearnerConfig, train: Dataset, *, grid: int, seed: int, run: RunDir,
                           val: Dataset | None = None, labels: np.ndarray | None = None,
                           bags: tuple[PatchBank, np.ndarray] | None = None, collate_fn: Any = None,
                           resume: bool = False) -> Trained:
    """Train one patch classifier: the learner's method (built under ``seed``) fitted by the engine
    on the patch dataset ``train``, and the :class:`PatchClassifier` it leaves.

    The one training of a patch classifier, whatever holds the patches (``retinassl train``'s
    :class:`~retinassl.data.datasets.PatchDataset` read from the cache, or the in-memory patch banks
    of ``retinassl semisup train`` and the ``ssl-gan`` sweep); the differences are options.

    Args:
        learner: method, encoder, engine settings and patch size.
        train: items the method's loss takes (labelled patches; for the SSL-GAN
            :class:`~retinassl.data.patch_bank.SemiSupervisedPatches`).
        grid: patches per image side (recorded in the classifier).
        seed: initialisation and data order.
        run: where checkpoints and logs go (``resume``: continue its last checkpoint).
        val: validation patches (None: no validation; a method that selects its weights on
            validation then refuses to train).
        labels: the labelled training patches' labels: negatives / positives among them weight the
            classes when the learner asks (``balance`` / ``balance_classes``).
        bags: ``(bank, image labels)``: images with a label but no lesion masks, added to ``train``
            as multiple-instance bags (:class:`~retinassl.data.patch_bank.PatchesAndBags`; binary
            supervised learners only).
        collate_fn: the loader's collate function (default: torch's).
    """
    name = learner.method_name
    method, initial = _learner_method(learner, seed, _pos_weight(labels))
    if bags is not None:  # the pool's images, with their image labels, as multiple-instance bags
        if getattr(method.config, "task", None) != "binary":
            raise ConfigError(f"learner {name}: image-level bags (an extension pool) need the "
                              f"binary task, not {getattr(method.config, 'task', None)!r}")
        bank, bag_labels = bags
        train = PatchesAndBags(train, bank, bag_labels)  # type: ignore[arg-type]
        collate_fn = collate_patches_and_bags
        log.info("%s %s: + %d pool images as image-level bags (%d diseased)", name,
                 learner.model.arch, len(bag_labels), int(bag_labels.sum()))
    if val is None and getattr(method.config, "select_on_validation", False):
        raise ConfigError(f"learner {name}: select_on_validation needs validation patches "
                          f"(val_patches > 0 and a validation split)")
    if method.monitor and method.monitor[0] == "image_auc" and val is not None and len(val) and "image_index" not in val[0]:
        raise ConfigError(f"learner {name}: select_metric image_auc needs validation patches that know their "
                          f"image (the in-memory patch banks of `semisup train` and the ssl-gan sweep)")
    result = fit(method, train, config=learner.engine, run=run, seed=seed, val=val, resume=resume,
                 collate_fn=collate_fn)
    method.eval()
    classifier = PatchClassifier.of_method(method, learner.patch_size, grid, learner.image_score)
    return Trained(method, classifier, result, initial.arch, dict(initial.kwargs), initial.kind)


def train_learner(learner: LearnerConfig, data: PatchData, labelled: np.ndarray, seed: int,
                  run: RunDir, resume: bool = False, use_pool: bool = False) -> Trained:
    """Train ``learner`` with the training images at positions ``labelled`` (into ``data.train``)
    labelled (:func:`train_patch_classifier` on the patch banks of ``data``); checkpoints and logs
    go to ``run`` (resumed from its last checkpoint with ``resume``)."""
    name = learner.method_name
    p = learner.patch_size
    bags = None
    if name == "ssl-gan":
        train_bank = data.bank("train", p, learner.margin)
        unlabelled = concat_banks([train_bank, data.bank("pool", p, learner.margin)]) if use_pool \
            else train_bank
        labelled_bank = train_bank.images(labelled)
        keep = in_field_of_view(unlabelled, learner.min_fov)
        dataset: Dataset = SemiSupervisedPatches(unlabelled, labelled_bank, seed, keep)
        labels = labelled_bank.labels
        kept = (f" ({len(keep)} with at least {learner.min_fov:g} of the cell in the field of view)"
                if learner.min_fov > 0 else "")
        log.info("ssl-gan: %d labelled images (%d patches), %d unlabelled patches%s", len(labelled),
                 len(labelled) * train_bank.per_image, len(unlabelled), kept)
    elif name == "supervised":
        bank = data.bank("train", p, 0).images(labelled)
        labels = bank.labels
        dataset = LabelledPatches(bank, length=max(len(bank), len(data.train) * bank.per_image))
        log.info("supervised %s: %d labelled images, %d patches (%.1f%% diseased)", learner.model.arch,
                 len(labelled), len(bank), 100 * float(np.mean(labels)))  # type: ignore[arg-type]
        if use_pool:
            bags = (data.bank("pool", p, 0), data.pool_labels())
    else:
        raise ValueError(f"learner method must be ssl-gan or supervised, not {name!r}")
    trained = train_patch_classifier(learner, dataset, grid=data.patches.grid, seed=seed, run=run,
                                     val=_validation(data, learner, seed), labels=labels, bags=bags,
                                     resume=resume)
    if trained.classifier is None:
        raise ValueError(f"method {name!r} leaves no binary patch classifier")
    return trained


def validation_operating_point(classifier: PatchClassifier, data: PatchData) -> dict[str, Any]:
    """The operating point of a patch classifier's image score, chosen on the run's validation
    images (Youden threshold, and the threshold reaching 90 % sensitivity); none without both
    classes among them."""
    from retinassl.jobs.patch_evaluation import evaluate_bank
    from retinassl.metrics.classification import operating_point

    labels = np.asarray(data.labels(data.val)).astype(int)
    if len(np.unique(labels)) < 2:
        log.warning("the validation images hold one class: the classifier is saved without a threshold")
        return {}
    _, predictions = evaluate_bank(classifier, data.bank("val", classifier.patch_size, 0), data.prepared,
                                   labels, data.ids(data.val), localisation=False)
    return {"operating_point": operating_point(labels, predictions["score"].to_numpy())}


def save_learner(trained: Trained, data: PatchData, labelled: np.ndarray, directory: str | Path, *,
                 method: str, preprocess: dict[str, Any], config: dict[str, Any]) -> Path:
    """Save ``trained``'s patch classifier (kind ``patch-classifier``) with what ``retinassl
    predict`` needs to use it on new images: the operating point chosen on the validation images
    (:func:`validation_operating_point`), the field-of-view scale of the training images
    (:func:`~retinassl.data.fov_scale.fov_record`), the precision it trained with (bf16 and float32
    train different models) and the fingerprint of its labelled images (``labelled``: positions
    into ``data.train``)."""
    if trained.classifier is None:
        raise ValueError("the learner left no patch classifier to save")
    return trained.classifier.save(
        directory, arch=trained.arch, kwargs=trained.kwargs, method=method, preprocess=preprocess,
        config=config, data_fingerprint=data.prepared.manifest.subset(data.train[labelled]).fingerprint(),
        extra={**validation_operating_point(trained.classifier, data), "precision": trained.fit.precision,
               **fov_record(data.prepared, data.train)})

"""``retinassl pretrain METHOD``: pretrain an encoder with any registered method on a pool of images
and leave the encoder checkpoint, the training curves and a small report in a run directory.

The pool is one or several data sources combined (:meth:`Manifest.concat`), or a manifest given by
the caller (:func:`run_pretrain`'s ``manifest``, e.g. a pool with the downstream test images
removed). Self-supervised methods ignore labels; ``label`` (with ``positive_from``) turns on
supervised pretraining (method ``supervised``, the "Fundus" model of Jang et al. 2024) on the rows
that have that label. ``model.init`` may name external weights (the two-step "ImageNet + Fundus"
variant, :mod:`retinassl.models.external`). ``mask`` (with method ``segmentation``) turns on
segmentation pretraining: a U-Net on the encoder learns the union of the rows' masks (e.g. IDRiD
part A's lesion masks), and the encoder is kept.

Run directory: ``config.yaml``, ``manifest.csv`` (the pool), ``logs/csv/metrics.csv`` and
TensorBoard logs, ``checkpoints/`` (resumable), ``encoder/`` (the product), ``results.csv``
(pretraining time, batches and final loss), ``report/index.html`` (loss curves).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationInfo, field_validator, model_validator

from retinassl.models.checkpoint import save_encoder
from retinassl.models.initialize import EncoderInput, check_encoder_inputs, model_encoder_inputs
from retinassl.models.published import published_meta, with_published
from retinassl.config import DataConfig, EngineConfig, ModelConfig, Section, to_yaml
from retinassl.data.augment import check_acquisition_inputs
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.cache import Cache, PreparedData
from retinassl.data.datasets import ImageDataset
from retinassl.data.leakage import PRETRAINING_KEY, content_digests, pretraining_record
from retinassl.data.loading import load_manifest
from retinassl.data.manifest import MASK_COLUMNS, Manifest, is_missing
from retinassl.data.splits import carve_validation
from retinassl.engine.fit import fit
from retinassl.errors import ConfigError, DataError
from retinassl.methods.base import seeded_method
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.launch import process_rank

log = logging.getLogger(__name__)

#: The method that learns ``mask`` (:mod:`retinassl.methods.vessel_segmentation`).
SEGMENTATION = "segmentation"
#: Mask columns segmentation pretraining can learn (``mask_fov`` is the field of view, not a target).
TARGET_MASKS = tuple(c for c in MASK_COLUMNS if c != "mask_fov")


class PretrainConfig(Section):
    """A pretraining run.

    Attributes:
        name: run name (the run directory is ``<runs_dir>/<name>-<time>``).
        seed: run seed (data order, augmentations and pretext sampling derive from it).
        runs_dir: where run directories are created.
        data: one data source, or a list of sources combined into one pool. The cache directory
            and worker count of the first are used for all.
        splits: keep only rows whose ``split`` is one of these (None: every row).
        label: a label column for supervised pretraining (rows without it are dropped); None for
            self-supervised methods, which ignore labels. A list of columns is the paper's
            "normal vs abnormal" over several sources: a row is abnormal (1) when any of its
            columns is positive (``>= positive_from``, default 1), normal (0) when every column it
            has is 0, and dropped when it has none (e.g. ``[abnormal, dme, dr_any]``: glaucoma
            photographs, and MX photographs with DME or DR).
        positive_from: binarise ``label`` as ``label >= positive_from`` (None keeps it).
        preprocess: how images become inputs (recorded in the encoder checkpoint).
        model: the encoder (``init`` may be a checkpoint or external weights).
        method: ``name`` of a registered method and its settings.
        engine: training settings.
        val_fraction: supervised pretraining: share of each class's patients held out to check the
            source task (0: none). The engine validates every epoch, the encoder of the best
            validation epoch is the one saved, and its held-out metrics are recorded (``val_auc``
            for a binary label): a pretraining that has not learned its source task shows it here
            before any transfer is measured.
        mask: segmentation pretraining (``method: {name: segmentation}``, a U-Net on the encoder):
            the target is the union of these manifest mask columns, e.g. the lesions of IDRiD part
            A (``[mask_MA, mask_HE, mask_EX, mask_SE]``); rows with none of them are dropped. The
            encoder learns where the lesions are, and is the one saved.
    """

    name: str = "pretrain"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: list[DataConfig] = Field(default_factory=lambda: [DataConfig()])
    splits: list[Literal["train", "val", "test", ""]] | None = None
    label: str | list[str] | None = None
    positive_from: int | None = None
    preprocess: PreprocessConfig = PreprocessConfig(size=224)
    model: ModelConfig = ModelConfig(arch="resnet18")
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "rotation"})
    engine: EngineConfig = EngineConfig()
    val_fraction: float = Field(0.0, ge=0, lt=1)
    mask: list[str] | None = Field(None, validate_default=True)

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (dict, DataConfig)) else value

    @field_validator("mask")
    @classmethod
    def _mask_for_segmentation(cls, mask: list[str] | None, info: ValidationInfo) -> list[str] | None:
        name = (info.data.get("method") or {}).get("name")
        unknown = [c for c in mask or [] if c not in TARGET_MASKS]
        if unknown:
            raise ValueError(f"{unknown} cannot be learned: the mask columns are {list(TARGET_MASKS)}")
        if (name == SEGMENTATION) != bool(mask):
            raise ValueError(f"method {name!r}: segmentation pretraining (method {SEGMENTATION!r}) needs the "
                             f"mask columns it learns (mask: [mask_MA, mask_HE, ...]), and only it uses them")
        if mask and info.data.get("label") is not None:
            raise ValueError(f"and label {info.data['label']!r}: segmentation pretraining learns masks, not a "
                             f"label; set one of them")
        return mask

    def encoder_inputs(self) -> list[EncoderInput]:
        """``model.init`` and the inputs it will see (:func:`~retinassl.models.initialize.check_encoder_inputs`)."""
        return model_encoder_inputs(self)

    @model_validator(mode="after")
    def _check_augmentation_inputs(self) -> PretrainConfig:
        check_acquisition_inputs(self.method, self.preprocess, "method", self.model.weights)
        return self

    @property
    def method_name(self) -> str:
        name = self.method.get("name")
        if not name:
            raise ConfigError("method.name is not set (e.g. method: {name: rotation})")
        return str(name)


def load_pool(config: PretrainConfig) -> Manifest:
    """The manifest of every source in ``config.data``, combined, with the ``splits``, ``label`` and
    ``mask`` filters applied."""
    if not config.data:
        raise ConfigError("data: no source given")
    manifests = [load_manifest(d) for d in config.data]
    if len(manifests) == 1:
        return select_rows(manifests[0], config)
    seen: set[str] = set()
    for index, (manifest, data) in enumerate(zip(manifests, config.data)):
        ids = set(manifest.frame["id"].astype(str))
        if ids & seen:  # e.g. the same source twice with other options: make ids unique
            prefix = f"{data.source}{index}-"
            log.info("source %d (%s) shares ids with an earlier source: prefixing its ids and "
                     "patients with %r", index, data.source, prefix)
            manifest.frame["id"] = prefix + manifest.frame["id"].astype(str)
            manifest.frame["patient"] = prefix + manifest.frame["patient"].astype(str)
            ids = set(manifest.frame["id"])
        seen |= ids
    pool = Manifest.concat(manifests, name="+".join(d.source for d in config.data))
    return select_rows(pool, config)


def select_rows(manifest: Manifest, config: PretrainConfig) -> Manifest:
    """Apply ``config.splits`` and, for supervised pretraining, keep rows that have ``label``
    (for segmentation pretraining: at least one of the ``mask`` columns)."""
    keep = np.ones(len(manifest), dtype=bool)
    if config.splits is not None:
        keep &= manifest.frame["split"].fillna("").astype(str).isin(config.splits).to_numpy()
    if config.mask:
        keep &= has_any_mask(manifest, config.mask)
    if isinstance(config.label, list):
        combined = any_positive(manifest, config.label, config.positive_from or 1)
        manifest = Manifest(manifest.frame.assign(**{label_column(config): combined}), manifest.root, manifest.name)
    if config.label is not None:
        keep &= np.isfinite(manifest.values(config.label)) if is_regression(config) \
            else manifest.labels(label_column(config)) >= 0
    pool = manifest.subset(keep)
    pool.frame = pool.frame.reset_index(drop=True)
    if len(pool) == 0:
        raise DataError(f"the pretraining pool is empty (splits {config.splits}, label {config.label}"
                        + (f", mask {config.mask}" if config.mask else "") + ")", path=manifest.name)
    return pool


def has_any_mask(manifest: Manifest, columns: list[str]) -> np.ndarray:
    """``(N,)`` True where a row has a file in any of the mask ``columns``. A column the pool lacks is
    an error naming the mask columns it has: in a pool of several sources every source's columns are
    present (empty where a source has none), so a missing one is a misspelling."""
    frame = manifest.frame
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        have = [c for c in frame.columns if c.startswith("mask_")]
        raise DataError(f"mask {missing}: no such column in the pretraining pool (its mask columns: "
                        f"{have or 'none'})", path=manifest.name)
    return np.column_stack([~frame[c].map(is_missing).to_numpy(bool) for c in columns]).any(axis=1)


def label_column(config: PretrainConfig) -> str | None:
    """The manifest column supervised pretraining reads: ``label``, or for a list of columns the
    combined one :func:`select_rows` adds (named ``a|b|c``)."""
    return "|".join(config.label) if isinstance(config.label, list) else config.label


def any_positive(manifest: Manifest, columns: list[str], positive_from: int) -> np.ndarray:
    """``(N,)`` 1 where any of ``columns`` is ``>= positive_from``, 0 where every known one is
    below it, -1 where none is known (a column a source does not have counts as unknown)."""
    present = [c for c in columns if c in manifest.frame.columns]
    if not present:
        manifest.labels(columns[0])  # raises the error naming the columns the manifest has
    labels = np.stack([manifest.labels(c) for c in present])
    known = labels >= 0
    positive = (labels >= positive_from) & known
    return np.where(positive.any(axis=0), 1, np.where(known.any(axis=0), 0, -1))


def is_regression(config: PretrainConfig) -> bool:
    """Supervised pretraining on a real-valued ``label`` (``method.task: regression``)."""
    return config.method.get("task") == "regression"


def pretrain_dataset(prepared: PreparedData, config: PretrainConfig) -> ImageDataset:
    """Whole images of the pool; with a ``label`` also their (binarised, or for regression real)
    labels; with ``mask`` their target masks and FOVs."""
    if config.mask:
        return ImageDataset(prepared, target=config.mask)
    if config.label is None:
        return ImageDataset(prepared)
    if is_regression(config):
        if isinstance(config.label, list):
            raise ConfigError("a regression target is one label column, not a list")
        return ImageDataset(prepared, config.label, regression=True)
    if isinstance(config.label, list):  # already 0/1 (select_rows)
        return ImageDataset(prepared, label_column(config), None)
    label_map = None if config.positive_from is None else (lambda g, t=config.positive_from: int(g >= t))
    return ImageDataset(prepared, config.label, label_map)


def held_out(prepared: PreparedData, config: PretrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """``(fit, validation)`` datasets of a supervised pretraining pool: ``val_fraction`` of each
    class's patients held out (:func:`~retinassl.data.splits.carve_validation`, seeded by the run)."""
    if config.label is None:
        raise ConfigError("val_fraction holds out labelled images to check the source task: it needs "
                          "supervised pretraining (a label); self-supervised and segmentation pretraining have none")
    labels = np.asarray(pretrain_dataset(prepared, config).labels)
    if is_regression(config):  # strata: the target's terciles
        labels = np.digitize(labels, np.quantile(labels, [1 / 3, 2 / 3]))
    groups = prepared.manifest.frame["patient"].astype(str).to_numpy()
    fit_pos, val_pos = carve_validation(labels, groups, config.val_fraction, config.seed)
    if len(val_pos) == 0:
        raise ConfigError(f"val_fraction {config.val_fraction}: no validation split with two classes can be "
                          f"held out of {len(labels)} images (too few patients per class)")
    return pretrain_dataset(prepared.subset(fit_pos), config), pretrain_dataset(prepared.subset(val_pos), config)


def run_pretrain(config: PretrainConfig, run: RunDir, resume: bool = False,
                 manifest: Manifest | None = None) -> Path:
    """Pretrain ``config.method`` on the pool and save the encoder into ``run``.

    Args:
        config: the run's configuration.
        run: its run directory (``RunDir.create`` or, to continue, ``RunDir.resume``).
        resume: continue from the newest checkpoint in ``run``.
        manifest: use this pool instead of ``config.data`` (``splits``/``label``/``mask`` still apply).

    Returns:
        The encoder checkpoint directory (``run.encoder_dir``), loadable with
        :func:`retinassl.models.checkpoint.load_encoder`.
    """
    name = config.method_name
    config = with_published(config)  # model.weights: the published model's architecture and inputs
    check_encoder_inputs(config)  # before the config is recorded
    run.write_config(to_yaml(config))
    pool = select_rows(manifest, config) if manifest is not None else load_pool(config)
    first = config.data[0] if config.data else DataConfig()
    prepared = Cache(first.cache_dir).prepare(
        pool, config.preprocess, workers=max(1, first.workers),
        skip_bad=any(d.skip_bad for d in config.data), mask_columns=config.mask or [])
    if prepared.skipped:
        run.update_status(skipped=[{"id": i, "problem": p} for i, p in prepared.skipped])
    prepared.manifest.save(run.path / "manifest.csv")
    dataset, val = pretrain_dataset(prepared, config), None
    if config.val_fraction:
        dataset, val = held_out(prepared, config)
    settings = {**config.method, "name": name}
    if is_regression(config):  # the head predicts the target standardised by the fitted rows
        targets = np.asarray(dataset.labels, dtype=np.float64)
        settings.update(target_mean=float(targets.mean()), target_std=float(targets.std()) or 1.0)
    method, initial = seeded_method(config.model, settings, name, config.seed)
    if initial.kind == "external" and config.model.weights is None and \
            config.preprocess.normalize != "imagenet":
        log.warning("model.init is external weights but preprocess.normalize is %r; ImageNet "
                    "weights expect 'imagenet'", config.preprocess.normalize)
    log.info("pretraining %s on %d images (%s)%s", name, len(dataset), prepared.manifest.name,
             f", {len(val)} held out to check the source task" if val is not None else "")
    result = fit(method, dataset, config=config.engine, run=run, seed=config.seed, val=val, resume=resume)
    method.eval()
    save_encoder(run.encoder_dir, method.encoder, arch=initial.arch, kwargs=initial.kwargs,
                 preprocess=config.preprocess.model_dump(), method=name,
                 config=config.model_dump(mode="json"),
                 data_fingerprint=prepared.manifest.fingerprint(),
                 extra={"init": initial.kind, "init_source": config.model.init,
                        "pool_size": len(dataset), "batches": result.batches, "precision": result.precision,
                        **published_meta(config.model),
                        # content fingerprints of the pool: evaluations warn when they test on these
                        PRETRAINING_KEY: pretraining_record(prepared.manifest,
                                                            content_digests(prepared.manifest))})
    if process_rank() == 0:
        report_figures(method, dataset, run, config.seed)
    final = final_losses(result.history)
    rows = [result_row(experiment=config.name, task="pretrain", method=name, init=initial.kind,
                       protocol="pretrain", seed=config.seed, metric=metric, value=value)
            for metric, value in {"pretrain_seconds": result.seconds,
                                  "pretrain_batches": float(result.batches), **final,
                                  **{f"val_{k}": float(v) for k, v in result.best.items()}}.items()]
    append_results(run.results_file, rows)
    return run.encoder_dir


def report_figures(method: Any, dataset: ImageDataset, run: RunDir, seed: int) -> None:
    """The method's own figures of a finished pretraining (an MAE's reconstructions) into its report;
    a failure is logged, not raised: the encoder is already saved."""
    try:
        method.figures(dataset, run.report_dir / "figures", seed)
    except Exception as exc:  # noqa: BLE001 -- a figure must not lose a finished pretraining
        log.warning("the %s figures were not written: %s", method.name, exc)


def final_losses(history: Path | None, tail: float = 0.1) -> dict[str, float]:
    """Mean of each ``train/*_loss`` column over the last ``tail`` of its logged values
    (``final_<group>_loss``), from the engine's CSV log."""
    if history is None or not Path(history).is_file():
        return {}
    frame = pd.read_csv(history)
    out = {}
    for column in frame.columns:
        if column.startswith("train/") and column.endswith("_loss"):
            values = frame[column].dropna().to_numpy()
            if len(values):
                n = max(1, int(round(tail * len(values))))
                out[f"final_{column.removeprefix('train/')}"] = float(values[-n:].mean())
    return out

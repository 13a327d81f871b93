"""The data side of a transfer sweep (:mod:`retinassl.sweeps.transfer`): the cleaned downstream
images, the evaluation folds, the nested label subsets of each (task, fold, seed), where a cell's
predictions go, and which test images are explained."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinassl.atomic import write_text
from retinassl.data.cache import Cache, PreparedData
from retinassl.data.leakage import PRETRAINING_KEY, clean_downstream, content_digests, seen_in_pretraining
from retinassl.data.loading import load_manifest
from retinassl.data.manifest import Manifest
from retinassl.data.splits import carve_validation, nested_subsets, stratified_kfold
from retinassl.errors import ConfigError
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import is_saved_model
from retinassl.metrics.tasks import TaskSpec
from retinassl.sweeps.transfer_config import TransferConfig

log = logging.getLogger(__name__)


def fraction_tag(fraction: float) -> str:
    return f"{fraction:g}"


def fold_value(fold: int | None) -> Any:
    return "" if fold is None else fold


def prediction_path(run: RunDir, task: str, protocol: str, init: str, fraction: float, seed: int,
                    fold: int | None) -> Path:
    """Where one cell's predictions go."""
    name = f"f{fraction_tag(fraction)}-s{seed}" + ("" if fold is None else f"-k{fold}")
    return run.predictions / "transfer" / task / protocol / init / f"{name}.csv"


def evaluation_folds(manifest: Manifest, task: TaskSpec, folds: int, seed: int) -> list[tuple[int | None, np.ndarray, np.ndarray]]:
    """``(fold, train rows, test rows)``: the official split (fold None) when the manifest has
    ``test`` rows, else stratified patient-grouped k-fold; only rows with the task's labels."""
    rows = task.labelled_rows(manifest)
    split = manifest.frame["split"].astype(str).to_numpy()
    if (split[rows] == "test").any():
        return [(None, rows[split[rows] != "test"], rows[split[rows] == "test"])]
    strata = task.strata(manifest)[rows]
    groups = manifest.frame["patient"].astype(str).to_numpy()[rows]
    return [(k, rows[tr], rows[te]) for k, (tr, te) in enumerate(stratified_kfold(strata, groups, folds, seed))]


def training_holdout(manifest: Manifest, task: TaskSpec, folds: int, split_seed: int, val_fraction: float,
                     seed: int, purpose: str,
                     never_held_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(fitted, held out)`` rows of the official training images: about ``val_fraction`` of the
    training patients held out, stratified by ``task``'s classes, never splitting a patient
    (:func:`~retinassl.data.splits.carve_validation` with ``seed``). What a choice made before any test
    cell (``purpose``: the fine-tuning settings, a pretraining seed) is scored on; the test images are
    never among them. ``never_held_out`` (``(N,)`` bool over the manifest's rows, from
    :func:`annotated_in_pretraining`): the patients of these rows are always fitted, never held out,
    as the test images were never in the pretraining (unless nothing else could be held out:
    :func:`~retinassl.data.splits.carve_validation`). Refused without an official test split: with
    k-fold cross-validation every image is a test image of some fold."""
    split = evaluation_folds(manifest, task, folds, split_seed)
    if len(split) > 1:
        raise ConfigError(f"{purpose} needs a downstream set with a test split: with k-fold "
                          "cross-validation every image is a test image of some fold, so no choice made "
                          f"on training images stays clear of the test images (leave {purpose} out)")
    _, train, _ = split[0]
    groups = manifest.patients[train]
    kept = None if never_held_out is None else np.asarray(never_held_out, dtype=bool)[train]
    fit_pos, val_pos = carve_validation(class_labels(task, manifest)[train], groups, val_fraction, seed, kept)
    if not len(val_pos):
        raise RuntimeError(f"{purpose}: the training images of task {task.name!r} cannot give a "
                           "validation split with every class (too few patients per class)")
    return train[fit_pos], train[val_pos]


def annotated_in_pretraining(init: str | None, manifest: Manifest,
                             digests: Sequence[str] | Callable[[], Sequence[str]]) -> np.ndarray:
    """``(N,)`` True for the rows of ``manifest`` whose image, a byte-identical copy of it (``digests``:
    the rows' content digests, or a function that computes them when first needed) or another image
    of its patient/eye group was read *with its labels or masks* by a supervised or segmentation
    pretraining of the encoder ``init`` (from the record each pretraining keeps in ``model.json``),
    following a two-step encoder to the encoder it continued from (``init_source``). An encoder that
    learnt these images' answers scores them as no new patient's image: a choice held out on them
    (:func:`training_holdout`) would favour memory. Self-supervised pretraining reads no labels and
    marks nothing; so do scratch and published weights. A saved model of another kind (a classifier,
    a segmenter) lists no images it was trained on, and an encoder whose ``init_source`` is gone
    cannot be followed: both are warned about, as their images cannot be marked."""
    from retinassl.models.checkpoint import read_encoder_meta

    marked = np.zeros(len(manifest), dtype=bool)
    seen: set[str] = set()
    values: Sequence[str] | None = None
    while init and init not in seen:
        if not is_saved_model(Path(init)):
            if seen and init != "scratch" and not Path(init).exists():
                log.warning("encoder %s continued from %s, which is not there (moved?): the images whose "
                            "labels or masks that pretraining read cannot be kept out of held-out choices",
                            sorted(seen)[-1], init)
            break
        seen.add(init)
        meta = read_encoder_meta(init)
        config = meta.get("config") or {}
        record = meta.get(PRETRAINING_KEY)
        if meta.get("kind", "encoder") != "encoder" and not record:
            log.warning("init %s is a saved %s: it was trained on labelled images it does not list, so "
                        "they cannot be kept out of held-out choices", init, meta.get("kind"))
        if record and (config.get("label") is not None or config.get("mask")):
            if values is None:
                values = digests() if callable(digests) else digests
            hits = set(seen_in_pretraining(record, manifest, values)["test_id"])
            marked |= manifest.frame["id"].astype(str).isin(hits).to_numpy()
        init = meta.get("init_source")
    return marked


def label_subsets(manifest: Manifest, task: TaskSpec, train_rows: np.ndarray, fractions: list[float],
                  seed: int, fold: int | None) -> dict[float, np.ndarray]:
    """Nested stratified subsets of ``train_rows`` (fraction -> sorted rows) for one seed and fold."""
    strata = task.strata(manifest)[train_rows]
    subset_seed = seed if fold is None else int(np.random.SeedSequence([seed, fold + 1]).generate_state(1)[0])
    picked = nested_subsets(strata, [float(f) for f in fractions], subset_seed)
    return {f: train_rows[idx] for f, idx in picked.items()}


def prepare_downstream(config: TransferConfig, out_dir: Path) -> PreparedData:
    """The downstream data of ``config``, cleaned (``dedupe``) and prepared; writes the cleaned
    manifest (``downstream.csv``) and what was removed (``downstream-removed.csv``) to ``out_dir``."""
    cache = Cache(config.data.cache_dir)
    manifest = load_manifest(config.data)
    if config.dedupe:
        from retinassl.data.manifest import label_columns

        # every label column: a copy whose DME risk disagrees is as unreliable as one whose grade does
        columns = sorted(set(label_columns(manifest.frame.columns)) |
                         {c for t in config.tasks for c in t.label_columns(manifest)})
        digests = content_digests(manifest, cache.memo)
        manifest, removed = clean_downstream(manifest, columns, digests, detect=config.detect_duplicates)
        write_text(out_dir / "downstream-removed.csv", removed.to_csv(index=False))
    prepared = cache.prepare(manifest, config.preprocess, workers=max(1, config.data.workers),
                             skip_bad=config.data.skip_bad, mask_columns=[])
    prepared.manifest.save(out_dir / "downstream.csv")
    return prepared


def class_labels(task: TaskSpec, manifest: Manifest) -> np.ndarray:
    """``(N,)`` integer labels for colouring and picking (multi-label: "has any label")."""
    y = task.targets(manifest)
    return y.max(axis=1) if y.ndim == 2 else y


def gradcam_rows(task: TaskSpec, manifest: Manifest, test: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` test rows, alternating positive and negative (binary view of the task), seeded."""
    y = class_labels(task, manifest)[test]
    positive = (y >= task.positive_from) if (task.kind == "multiclass" and task.positive_from) else y > 0
    rng = np.random.default_rng(seed)
    pos, neg = rng.permutation(test[positive]), rng.permutation(test[~positive])
    out = []
    for i in range(n):
        source = pos if i % 2 == 0 else neg
        if len(source) > i // 2:
            out.append(source[i // 2])
    return np.asarray(out, dtype=int)

"""The transfer-evaluation sweep: initialisations x label fractions x seeds x folds, linear probe and
fine-tuning, into one results table and one prediction file per cell.

The protocol of Jang et al. 2024 ("The quality of learned representations was assessed through
linear probing (LP) and full fine-tuning (FT)"; a "stress test under data-limited conditions"
with 1-100 % of the labels; "five-fold cross-validation ... Differences in AUC scores between
models were tested using DeLong's test"):

1. **Data.** The downstream manifest is cleaned of duplicates and test leakage
   (:func:`~retinassl.evaluate.leakage.clean_downstream`). With a ``test`` split it is the test
   set (one "fold", recorded with an empty ``fold``); without one, ``folds``-fold stratified,
   patient-grouped cross-validation is used and every image is tested once per seed.
2. **Initialisations.** ``scratch``, an encoder checkpoint, external weights, or ``pretrain``: a
   pretraining run (:func:`retinassl.pretrain.run.run_pretrain`) on the pool of ``pool.data`` with
   the test images and their copies removed (:func:`~retinassl.evaluate.leakage.clean_pool`), or
   (``pool: train``) on the labelled training images, e.g. the supervised "Fundus" model.
3. **Label fractions.** For each (task, fold, seed) one stratified random ordering of the training
   images is drawn (:func:`~retinassl.data.splits.nested_subsets`); the subset of fraction ``f``
   is its first ``ceil(f N)`` images, so subsets are nested across fractions, differ across
   seeds, and are the same for every initialisation and protocol (paired comparisons).
4. **Protocols.** ``probe``: logistic regression on cached frozen features
   (:mod:`~retinassl.evaluate.probe`); ``finetune``: every weight trained with early stopping on a
   validation split carved from the subset (:mod:`~retinassl.evaluate.finetune`).
5. **Outputs.** Per cell: ``predictions/transfer/<task>/<protocol>/<init>/f<fraction>-s<seed>[-k<fold>].csv``
   and its metrics in ``results.csv``. A cell whose rows are in the results table is done, so a
   killed sweep rerun with ``--resume`` computes only the missing cells (and a fine-tuning cell
   killed midway continues from its last checkpoint). Then t-SNE plots, Grad-CAM overlays and the
   comparison table (:mod:`~retinassl.evaluate.compare`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from ..atomic import write_text
from ..config import DataConfig, EngineConfig, ModelConfig, PreprocessConfig, Section, to_yaml, validate
from ..data.cache import Cache, PreparedData
from ..data.loading import load_manifest
from ..data.manifest import Manifest
from ..data.splits import nested_subsets, stratified_kfold
from ..errors import ConfigError, DataError
from ..models.initialize import seeded_initial_encoder
from ..results import append_results, read_results, result_row
from ..rundir import RunDir
from .features import extract_features
from .finetune import FinetuneConfig, finetune, remove_workdir, save_classifier
from .leakage import clean_downstream, clean_pool, content_digests
from .probe import ProbeConfig, assert_frozen, fit_probe
from .tasks import TaskSpec

log = logging.getLogger(__name__)

FRACTIONS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
Protocol = Literal["probe", "finetune"]


class InitSpec(Section):
    """One initialisation compared by the sweep.

    Attributes:
        name: its name in results and figures (``scratch``, ``rotation``, ``fundus``...).
        init: ``scratch``, an encoder checkpoint directory, or an external weights file.
        pretrain: settings of a pretraining run made first (the fields of
            :class:`~retinassl.pretrain.run.PretrainConfig`: ``method``, ``engine``, ``label``,
            ``positive_from``, ``seed``, ``model``; ``data``, ``preprocess`` and ``name`` are set by
            the sweep). Its encoder becomes the initialisation.
        pool: what ``pretrain`` trains on: ``unlabelled`` (the cleaned pool of ``pool.data``) or
            ``train`` (the cleaned downstream training images with their labels; only with an
            official test split).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    init: str = "scratch"
    pretrain: dict[str, Any] | None = None
    pool: Literal["unlabelled", "train"] = "unlabelled"


class PoolConfig(Section):
    """The unlabelled pretraining pool.

    Attributes:
        data: the sources combined into the pool (labels are ignored).
        detect_duplicates: also run the near-duplicate detector against the test images.
    """

    data: list[DataConfig] = Field(default_factory=list)
    detect_duplicates: bool = True


class ExplainConfig(Section):
    """Figures made after the cells.

    Attributes:
        tsne: a t-SNE of each initialisation's frozen embeddings, coloured by the first task's label.
        gradcam: test images in each initialisation's Grad-CAM overlay (0: none); uses the model
            fine-tuned on the largest fraction with the first seed.
        task: the task whose fine-tuned model is explained (default: the first).
    """

    tsne: bool = True
    gradcam: int = Field(6, ge=0)
    task: str | None = None


class TransferConfig(Section):
    """A transfer-evaluation experiment (``kind: transfer``).

    Attributes:
        kind: always ``transfer`` (the sweep runner that executes it).
        name: experiment name (results ``experiment`` column, run-directory name).
        seed: seeds the folds, the scratch encoder of the linear probe, and pretraining.
        runs_dir: where run directories are created.
        data: the downstream dataset (``split`` column: ``test`` rows are the test set).
        dedupe: clean the downstream data (:func:`~retinassl.evaluate.leakage.clean_downstream`).
        detect_duplicates: also run the near-duplicate detector on the downstream data.
        preprocess: preprocessing of every image (downstream and pool).
        model: the encoder architecture (``init`` is set per initialisation).
        pool: the pretraining pool.
        pretrain_engine: engine settings of the pretraining runs (an initialisation's
            ``pretrain.engine`` overrides them).
        inits: the initialisations compared.
        reference: the initialisation others are tested against (DeLong).
        tasks: the downstream tasks.
        fractions: label fractions of the training images.
        seeds: label-subset seeds (and fine-tuning seeds).
        finetune_seeds: seeds used by fine-tuning (default: ``seeds``), to save compute.
        finetune_fractions: fractions used by fine-tuning (default: ``fractions``).
        protocols: ``probe`` and/or ``finetune``.
        folds: cross-validation folds when the data has no test split.
        probe: linear-probe settings.
        finetune: fine-tuning settings.
        engine: fine-tuning engine settings.
        explain: t-SNE and Grad-CAM figures.
        keep_workdirs: keep each fine-tuning run's checkpoints and logs (default: deleted).
        workers: processes sharing the cells (each takes every ``workers``-th initialisation;
            with ``engine.num_threads: 1`` two workers use both cores of a 2-core machine).
        budgets: per ``--budget`` overrides of any of these keys (applied by the sweep command).
    """

    kind: Literal["transfer"] = "transfer"
    name: str = "transfer"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    dedupe: bool = True
    detect_duplicates: bool = False
    preprocess: PreprocessConfig = PreprocessConfig(size=128)
    model: ModelConfig = ModelConfig(arch="resnet18")
    pool: PoolConfig = PoolConfig()
    pretrain_engine: EngineConfig = EngineConfig()
    inits: list[InitSpec] = Field(default_factory=lambda: [InitSpec(name="scratch")])
    reference: str = "scratch"
    tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="abnormal")])
    fractions: list[float] = Field(default_factory=lambda: list(FRACTIONS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    finetune_seeds: list[int] | None = None
    finetune_fractions: list[float] | None = None
    protocols: list[Protocol] = Field(default_factory=lambda: ["probe", "finetune"])
    folds: int = Field(5, ge=2)
    probe: ProbeConfig = ProbeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    engine: EngineConfig = EngineConfig(batch_size=32, checkpoint_every_n_steps=0)
    explain: ExplainConfig = ExplainConfig()
    keep_workdirs: bool = False
    workers: int = Field(1, ge=1)
    budgets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def check(self) -> None:
        """Cross-field checks (unique names, a known reference, valid fractions)."""
        names = [i.name for i in self.inits]
        if len(set(names)) != len(names):
            raise ConfigError(f"inits: names must be unique, got {names}")
        if self.reference not in names:
            raise ConfigError(f"reference {self.reference!r} is not one of the inits {names}")
        if len({t.name for t in self.tasks}) != len(self.tasks) or not self.tasks:
            raise ConfigError("tasks: give at least one task, with unique names")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"fractions must be in (0, 1], got {self.fractions}")
        bad = [s for s in (self.finetune_seeds or []) if s not in self.seeds]
        if bad:
            raise ConfigError(f"finetune_seeds {bad} are not among seeds {self.seeds}")
        bad = [f for f in (self.finetune_fractions or []) if f not in self.fractions]
        if bad:
            raise ConfigError(f"finetune_fractions {bad} are not among fractions {self.fractions}")
        for spec in self.inits:  # a typo must fail now, not after hours of other initialisations
            if spec.pretrain is not None:
                from ..method import method_class

                pretrain = self.pretrain_config(spec, Path("pool.csv"))
                params = {k: v for k, v in pretrain.method.items() if k != "name"}
                validate(method_class(pretrain.method_name).Config, params,
                         origin=f"init {spec.name}: pretrain.method")

    def pretrain_config(self, spec: InitSpec, pool_file: Path):  # -> PretrainConfig
        """The pretraining run of ``spec`` (on the pool manifest ``pool_file``)."""
        from ..pretrain.run import PretrainConfig

        settings = dict(spec.pretrain or {})
        engine = deep_merge(self.pretrain_engine.model_dump(mode="json"), settings.pop("engine", {}) or {})
        model = deep_merge(self.model.model_dump(mode="json"), settings.pop("model", {}) or {})
        merged = {"name": f"{self.name}-{spec.name}", "seed": self.seed,
                  "data": [{"source": "manifest", "manifest": str(pool_file),
                            "cache_dir": None if self.data.cache_dir is None else str(self.data.cache_dir),
                            "workers": self.data.workers}],
                  "preprocess": self.preprocess.model_dump(mode="json"), "model": model,
                  "engine": engine, **settings}
        return validate(PretrainConfig, merged, origin=f"init {spec.name}: pretrain")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in recursively (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(data: dict[str, Any], budget: str | None) -> TransferConfig:
    """Validate a preset's mapping after applying its ``budgets[budget]`` overrides."""
    budgets = data.get("budgets", {}) or {}
    if budget is not None and budgets and budget not in budgets:
        raise ConfigError(f"budget {budget!r} is not defined by this experiment (it has "
                          f"{', '.join(budgets)})")
    merged = deep_merge(data, budgets.get(budget, {}) if budget else {})
    config = validate(TransferConfig, merged, origin=f"transfer experiment ({budget or 'no'} budget)")
    config.check()
    return config


# -- data ------------------------------------------------------------------------------------------
def _fraction_tag(fraction: float) -> str:
    return f"{fraction:g}"


def _fold_value(fold: int | None) -> Any:
    return "" if fold is None else fold


def cell_key(task: str, init: str, protocol: str, fraction: float, seed: int, fold: int | None) -> tuple:
    """The identity of one cell (as read back from the results table)."""
    return (task, init, protocol, round(float(fraction), 6), int(seed), -1 if fold is None else int(fold))


def done_cells(results_file: Path) -> set[tuple]:
    """Keys of the cells whose rows are in the results table (a cell's rows are appended at once)."""
    if not results_file.is_file():
        return set()
    table = read_results(results_file)
    rows = table[(table["metric"] == "n_test") & table["protocol"].isin(["probe", "finetune"])]
    return {cell_key(r.task, r.init, r.protocol, r.fraction, r.seed,
                     None if pd.isna(r.fold) else int(r.fold)) for r in rows.itertuples()}


def prediction_path(run: RunDir, task: str, protocol: str, init: str, fraction: float, seed: int,
                    fold: int | None) -> Path:
    """Where one cell's predictions go."""
    name = f"f{_fraction_tag(fraction)}-s{seed}" + ("" if fold is None else f"-k{fold}")
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
        from ..data.manifest import label_columns

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


class TransferSweep:
    """Runs a :class:`TransferConfig` inside a run directory (see the module docstring)."""

    def __init__(self, config: TransferConfig, run: RunDir) -> None:
        self.config = config
        self.run = run
        self.data_dir = run.sub("data")
        self.cache = Cache(config.data.cache_dir)
        self._prepared: PreparedData | None = None

    # -- downstream data ---------------------------------------------------------------------
    def downstream(self) -> PreparedData:
        """The cleaned, prepared downstream data (cleaning recorded in ``data/``)."""
        if self._prepared is None:
            self._prepared = prepare_downstream(self.config, self.data_dir)
        return self._prepared

    def pool(self) -> Manifest:
        """The cleaned unlabelled pretraining pool (``data/pool.csv``)."""
        path = self.data_dir / "pool.csv"
        if path.is_file():
            return Manifest.load(path)
        config = self.config
        if not config.pool.data:
            raise ConfigError("an initialisation pretrains on the unlabelled pool, but pool.data lists "
                              "no source")
        manifests = [load_manifest(d) for d in config.pool.data]
        pool = manifests[0] if len(manifests) == 1 else Manifest.concat(
            manifests, name="+".join(d.source for d in config.pool.data))
        prepared = self.downstream()
        frame = prepared.manifest.frame
        test = prepared.manifest.subset((frame["split"].astype(str) == "test").to_numpy())
        if len(test):
            pool, removed = clean_pool(pool, test, content_digests(pool, self.cache.memo),
                                       content_digests(test, self.cache.memo),
                                       detect=config.pool.detect_duplicates)
            write_text(self.data_dir / "pool-removed.csv", removed.to_csv(index=False))
        else:
            log.warning("the downstream data has no test split (k-fold): every downstream image is a "
                        "test image in some fold, so the pool must not contain them; only pool rows "
                        "with the downstream ids or content are removed")
            ids = set(frame["id"].astype(str))
            digests = set(content_digests(prepared.manifest, self.cache.memo))
            own = content_digests(pool, self.cache.memo)
            keep = np.array([(i not in ids) and (d not in digests)
                             for i, d in zip(pool.frame["id"].astype(str), own)])
            pool = pool.subset(keep)
        pool.save(path)
        return pool

    # -- initialisations ---------------------------------------------------------------------
    def model_of(self, spec: InitSpec) -> ModelConfig:
        """The model config of an initialisation (pretraining it first when needed)."""
        base = self.config.model
        if spec.pretrain is None:
            return base.model_copy(update={"init": spec.init})
        return base.model_copy(update={"init": str(self.pretrained(spec))})

    def pretrained(self, spec: InitSpec) -> Path:
        """Run (or reuse, or resume) the pretraining of ``spec``; returns its encoder directory."""
        from ..pretrain.run import run_pretrain

        config = self.config
        folder = self.run.path / "pretrain" / spec.name
        encoder_dir = folder / "encoder"
        if (encoder_dir / "encoder.json").is_file():
            return encoder_dir
        if spec.pool == "train":
            prepared = self.downstream()
            split = prepared.manifest.frame["split"].astype(str)
            if not (split == "test").any():
                raise ConfigError(f"init {spec.name}: pool 'train' needs an official test split (with "
                                  f"k-fold every image is tested once)")
            pool = prepared.manifest.subset((split != "test").to_numpy())
            pool_file = pool.save(self.data_dir / f"pool-{spec.name}.csv")
        else:
            pool = self.pool()
            pool_file = self.data_dir / "pool.csv"
        pretrain_config = config.pretrain_config(spec, pool_file)
        resume = (folder / "run.json").is_file()
        prun = RunDir.resume(folder) if resume else _new_rundir(folder, f"{config.name}-{spec.name}")
        log.info("init %s: pretraining %s on %d images%s", spec.name, pretrain_config.method_name,
                 len(pool), " (resuming)" if resume else "")
        start = time.perf_counter()
        out = run_pretrain(pretrain_config, prun, resume=resume, manifest=pool)
        prun.update_status(status="finished")
        rows = []
        if prun.results_file.is_file():
            table = read_results(prun.results_file)
            rows = [result_row(experiment=config.name, task="pretrain", method=str(r.method), init=spec.name,
                               protocol="pretrain", seed=config.seed, metric=str(r.metric), value=float(r.value))
                    for r in table.itertuples()]
        rows.append(result_row(experiment=config.name, task="pretrain", method=pretrain_config.method_name,
                               init=spec.name, protocol="pretrain", seed=config.seed,
                               metric="pool_size", value=float(len(pool))))
        append_results(self.run.results_file, rows)
        log.info("init %s: pretrained in %.0f s", spec.name, time.perf_counter() - start)
        return out

    # -- cells -------------------------------------------------------------------------------
    def run_all(self, shard: tuple[int, int] | None = None) -> None:
        """Every cell not yet done, then the figures and the comparison table.

        Args:
            shard: ``(i, n)``: only the cells of every ``n``-th initialisation from the ``i``-th,
                and no figures or comparison (another process's final pass makes them).
        """
        config = self.config
        if config.engine.num_threads:
            torch.set_num_threads(config.engine.num_threads)
        prepared = self.downstream()
        done = done_cells(self.run.results_file)
        plan = self.plan(prepared.manifest)
        inits = config.inits if shard is None else config.inits[shard[0]::shard[1]]
        log.info("transfer sweep%s: inits %s, %s; %d cells already done",
                 "" if shard is None else f" (worker {shard[0] + 1} of {shard[1]})",
                 ", ".join(i.name for i in inits), " and ".join(config.protocols), len(done))
        for spec in inits:
            model = self.model_of(spec)
            if "probe" in config.protocols:
                self.probe_cells(spec, model, prepared, plan, done)
            if "finetune" in config.protocols:
                self.finetune_cells(spec, model, prepared, plan, done)
        if shard is not None:
            return
        self.figures(prepared)
        from .compare import write_comparison

        write_comparison(self.run, config)

    def plan(self, manifest: Manifest) -> dict[str, dict[str, Any]]:
        """Per task: its folds and, per (fold, seed), the nested label subsets."""
        config = self.config
        out: dict[str, dict[str, Any]] = {}
        for task in config.tasks:
            folds = evaluation_folds(manifest, task, config.folds, config.seed)
            cells = []
            for fold, train, test in folds:
                for seed in config.seeds:
                    subsets = label_subsets(manifest, task, train, config.fractions, seed, fold)
                    for fraction in config.fractions:
                        cells.append({"fold": fold, "seed": seed, "fraction": fraction,
                                      "rows": subsets[fraction], "test": test})
            out[task.name] = {"task": task, "cells": cells}
        return out

    def _record(self, spec: InitSpec, protocol: str, task: TaskSpec, cell: dict[str, Any],
                scores: np.ndarray, extra: dict[str, float]) -> dict[str, float]:
        manifest = self._prepared.manifest  # type: ignore[union-attr]
        test = cell["test"]
        labels = task.targets(manifest)[test]
        names = task.label_columns(manifest) if task.kind == "multilabel" else None
        ids = manifest.frame["id"].astype(str).to_numpy()[test].tolist()
        path = prediction_path(self.run, task.name, protocol, spec.name, cell["fraction"], cell["seed"], cell["fold"])
        write_text(path, task.prediction_frame(ids, labels, scores, names).to_csv(index=False))
        metrics = {**task.metrics(labels, scores, names), **extra}
        rows = [result_row(experiment=self.config.name, task=task.name,
                           method="logistic" if protocol == "probe" else "supervised", init=spec.name,
                           protocol=protocol, fraction=cell["fraction"], n_labelled=len(cell["rows"]),
                           seed=cell["seed"], fold=_fold_value(cell["fold"]), metric=k, value=v)
                for k, v in metrics.items()]
        append_results(self.run.results_file, rows)
        return metrics

    def probe_cells(self, spec: InitSpec, model: ModelConfig, prepared: PreparedData,
                    plan: dict[str, dict[str, Any]], done: set[tuple]) -> None:
        """Linear probes of every missing cell, on features extracted once for this init."""
        config = self.config
        todo = [(p["task"], c) for p in plan.values() for c in p["cells"]
                if cell_key(p["task"].name, spec.name, "probe", c["fraction"], c["seed"], c["fold"]) not in done]
        if not todo:
            return
        encoder = seeded_initial_encoder(model, config.seed).encoder
        with assert_frozen(encoder):
            features = extract_features(encoder, prepared, config.data.cache_dir)
            append_results(self.run.results_file, [
                result_row(experiment=config.name, task="features", method="extract", init=spec.name,
                           protocol="probe", seed=config.seed, metric=m, value=v)
                for m, v in {"extract_seconds": features.seconds,
                             "extracted_images": float(features.extracted),
                             "feature_dim": float(features.values.shape[1])}.items()])
            for task, cell in todo:
                start = time.perf_counter()
                targets = task.targets(prepared.manifest)
                scores, cs = fit_probe(features.values[cell["rows"]], targets[cell["rows"]],
                                       features.values[cell["test"]], task, task.classes(prepared.manifest),
                                       config.probe, cell["seed"])
                seconds = time.perf_counter() - start
                finite = [c for c in cs if np.isfinite(c)]
                metrics = self._record(spec, "probe", task, cell, scores,
                                       {"seconds": seconds, "C": float(np.median(finite)) if finite else math.nan})
                log.info("probe %s %s f=%s seed=%s fold=%s: %s %.3f", spec.name, task.name,
                         _fraction_tag(cell["fraction"]), cell["seed"], cell["fold"], task.primary,
                         metrics.get(task.primary, math.nan))

    def finetune_cells(self, spec: InitSpec, model: ModelConfig, prepared: PreparedData,
                       plan: dict[str, dict[str, Any]], done: set[tuple]) -> None:
        """Fine-tune every missing cell (one training each)."""
        config = self.config
        seeds = config.finetune_seeds or config.seeds
        fractions = config.finetune_fractions or config.fractions
        explain_task = config.explain.task or config.tasks[0].name
        largest = max(fractions)
        for p in plan.values():
            task = p["task"]
            for cell in p["cells"]:
                if cell["seed"] not in seeds or cell["fraction"] not in fractions:
                    continue
                key = cell_key(task.name, spec.name, "finetune", cell["fraction"], cell["seed"], cell["fold"])
                if key in done:
                    continue
                name = f"{task.name}-{spec.name}-f{_fraction_tag(cell['fraction'])}-s{cell['seed']}" + (
                    "" if cell["fold"] is None else f"-k{cell['fold']}")
                workdir = self.run.path / "cells" / name
                resume = (workdir / "checkpoints").is_dir()
                result = finetune(model, prepared, cell["rows"], cell["test"], task, config.finetune,
                                  config.engine, workdir, cell["seed"], resume=resume)
                metrics = self._record(spec, "finetune", task, cell, result.scores, {
                    "seconds": result.seconds, "steps": float(result.steps),
                    "val_size": float(len(result.val_rows)),
                    "best_epoch": float(result.best.get("epoch", math.nan))})
                log.info("finetune %s %s f=%s seed=%s fold=%s: %s %.3f (%d steps, %.0f s)", spec.name,
                         task.name, _fraction_tag(cell["fraction"]), cell["seed"], cell["fold"],
                         task.primary, metrics.get(task.primary, math.nan), result.steps, result.seconds)
                if (task.name == explain_task and cell["fraction"] == largest and cell["seed"] == seeds[0]
                        and cell["fold"] in (None, 0)):
                    initial_meta = _arch_of(model)
                    save_classifier(self.run.path / "models" / f"{task.name}-{spec.name}", result.method,
                                    arch=initial_meta[0], kwargs=initial_meta[1],
                                    preprocess=config.preprocess.model_dump(), task=task,
                                    extra={"init_name": spec.name})
                if not config.keep_workdirs:
                    remove_workdir(workdir)

    # -- figures -----------------------------------------------------------------------------
    def figures(self, prepared: PreparedData) -> None:
        """t-SNE of each initialisation's frozen embeddings and Grad-CAM overlays."""
        config = self.config
        figures = self.run.report_dir / "figures"
        task = next((t for t in config.tasks if t.name == (config.explain.task or config.tasks[0].name)),
                    config.tasks[0])
        if config.explain.tsne:
            from ..explain.embedding import tsne_figure

            rows = task.labelled_rows(prepared.manifest)
            for spec in config.inits:
                path = figures / f"tsne-{spec.name}.png"
                if path.is_file():
                    continue
                encoder = seeded_initial_encoder(self.model_of(spec), config.seed).encoder
                with assert_frozen(encoder):
                    features = extract_features(encoder, prepared, config.data.cache_dir)
                tsne_figure(features.values[rows], class_labels(task, prepared.manifest)[rows], path,
                            title=f"{spec.name}: frozen embeddings ({task.name})", seed=config.seed)
        if config.explain.gradcam and "finetune" in config.protocols:
            from ..explain.gradcam import gradcam_gallery

            folds = evaluation_folds(prepared.manifest, task, config.folds, config.seed)
            test = folds[0][2]
            picks = gradcam_rows(task, prepared.manifest, test, config.explain.gradcam, config.seed)
            for spec in config.inits:
                model_dir = self.run.path / "models" / f"{task.name}-{spec.name}"
                path = figures / f"gradcam-{spec.name}.png"
                if model_dir.is_dir() and not path.is_file():
                    gradcam_gallery(model_dir, prepared, picks, path, title=spec.name)


def _arch_of(model: ModelConfig) -> tuple[str, dict[str, Any]]:
    if model.init == "scratch":
        return model.arch, dict(model.kwargs)
    from ..checkpoint import read_encoder_meta

    path = Path(model.init)
    if path.is_dir() or path.name == "encoder.json":
        meta = read_encoder_meta(path)
        return meta["arch"], dict(meta["kwargs"])
    return model.arch, dict(model.kwargs)


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


def _new_rundir(folder: Path, name: str) -> RunDir:
    folder.mkdir(parents=True, exist_ok=True)
    run = RunDir(folder)
    run.update_status(status="running", name=name)
    return run


def run_transfer(config: TransferConfig, run: RunDir, shard: tuple[int, int] | None = None) -> None:
    """Run (or complete) the sweep of ``config`` in ``run``.

    With ``config.workers > 1`` (and no ``shard``), that many processes share the initialisations
    (:meth:`TransferSweep.run_all`); then this process completes anything left and makes the
    figures and the comparison table.
    """
    config.check()
    write_text(run.path / "transfer.yaml", to_yaml(config))
    if shard is None and config.workers > 1:
        from ..workers import run_worker_processes

        sweep = TransferSweep(config, run)  # shared inputs once, before the workers start
        sweep.downstream()
        if any(i.pretrain is not None and i.pool == "unlabelled" for i in config.inits):
            sweep.cache.prepare(sweep.pool(), config.preprocess, workers=max(1, config.data.workers),
                                mask_columns=[], skip_bad=config.data.skip_bad)
        data = config.model_dump(mode="json")
        run_worker_processes(_shard_worker, [(data, str(run.path), i, config.workers)
                                             for i in range(config.workers)], "transfer-worker")
    TransferSweep(config, run).run_all(shard)


def _shard_worker(data: dict[str, Any], run_path: str, index: int, count: int) -> None:
    """One worker process of :func:`run_transfer` (logs into the run's log file; it ends if the
    sweep's main process dies)."""
    from ..workers import exit_with_parent

    exit_with_parent()
    logger = logging.getLogger("retinassl")
    logger.setLevel(logging.INFO)
    run = RunDir(Path(run_path))
    handler = run.attach_log_file()
    try:
        run_transfer(TransferConfig.model_validate(data), run, shard=(index, count))
    finally:
        logging.getLogger("retinassl").removeHandler(handler)


def transfer_runner(data: dict[str, Any], run: RunDir, budget: str, resume: bool) -> None:
    """The ``transfer`` kind of ``retinassl sweep`` (see :func:`retinassl.cli.sweep.runners`)."""
    config = resolve_config(data, budget)
    if not resume and done_cells(run.results_file):
        raise DataError("the run directory already holds results; use --resume", path=run.path)
    run_transfer(config, run)

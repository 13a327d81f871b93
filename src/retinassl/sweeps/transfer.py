"""The transfer-evaluation sweep: initialisations x label fractions x seeds x folds, linear probe and
fine-tuning, into one results table and one prediction file per cell.

The protocol of Jang et al. 2024 ("The quality of learned representations was assessed through
linear probing (LP) and full fine-tuning (FT)"; a "stress test under data-limited conditions"
with 1-100 % of the labels; "five-fold cross-validation ... Differences in AUC scores between
models were tested using DeLong's test"):

1. **Data.** The downstream manifest is cleaned of duplicates and test leakage
   (:func:`~retinassl.data.leakage.clean_downstream`). With a ``test`` split it is the test
   set (one "fold", recorded with an empty ``fold``); without one, ``folds``-fold stratified,
   patient-grouped cross-validation is used and every image is tested once per seed.
2. **Initialisations.** ``scratch``, an encoder checkpoint, external weights, or ``pretrain``: a
   pretraining run (:func:`retinassl.jobs.pretrain.run_pretrain`) on the pool of ``pool.data`` with
   the test images and their copies removed (:func:`~retinassl.data.leakage.clean_pool`), or
   (``pool: train``) on the labelled training images, e.g. the supervised "Fundus" model; an init
   naming an earlier one continues from its encoder (two-step). :mod:`~retinassl.sweeps.transfer_inits`.
3. **Label fractions.** For each (task, fold, seed) one stratified random ordering of the training
   images is drawn (:func:`~retinassl.data.splits.nested_subsets`); the subset of fraction ``f``
   is its first ``ceil(f N)`` images, so subsets are nested across fractions, differ across
   seeds, and are the same for every initialisation and protocol (paired comparisons).
4. **Protocols.** ``probe``: logistic regression on cached frozen features
   (:mod:`~retinassl.jobs.probe`); ``finetune``: every weight trained with early stopping on a
   validation split carved from the subset (:mod:`~retinassl.jobs.finetune`), with settings
   chosen per initialisation on training images when ``finetune_tuning`` is set
   (:mod:`~retinassl.sweeps.transfer_tuning`).
5. **Outputs.** Per cell: ``predictions/transfer/<task>/<protocol>/<init>/f<fraction>-s<seed>[-k<fold>].csv``
   and its metrics in ``results.csv``. A cell whose rows are in the results table is done, so a
   killed sweep rerun with ``--resume`` computes only the missing cells (and a fine-tuning cell
   killed midway continues from its last checkpoint). Then t-SNE plots, Grad-CAM overlays and the
   comparison table (:mod:`~retinassl.metrics.compare`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import write_text
from retinassl.config import ModelConfig, to_yaml
from retinassl.data.cache import Cache, PreparedData
from retinassl.data.manifest import Manifest
from retinassl.engine.threads import apply_threads, sharing_processes
from retinassl.errors import ConfigError, DataError
from retinassl.models.initialize import check_encoder_inputs
from retinassl.models.published import published_meta
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import LEGACY, META
from retinassl.sweeps.grid import Grid, data_settings, run_grid
from retinassl.sweeps.transfer_config import InitSpec, TransferConfig, resolve_config
from retinassl.sweeps.transfer_inits import TransferInits
from retinassl.sweeps.transfer_tuning import check_settings, tune_init, tuned_finetune, tuning_workdirs
from retinassl.sweeps.external import ExternalSet, warn_overlap
from retinassl.sweeps.transfer_external import (external_rows, prepare_external, with_external_tasks,
                                               write_external_table)
from retinassl.sweeps.transfer_data import (fold_value, fraction_tag, class_labels, evaluation_folds, gradcam_rows,
                                           label_subsets, prediction_path, prepare_downstream)
from retinassl.jobs.finetune import FinetuneConfig, finetune, remove_workdir, save_classifier
from retinassl.jobs.probe import earlier_probe_settings, fit_probe
from retinassl.metrics.tasks import TaskSpec

log = logging.getLogger(__name__)
HELD_OUT_FILE = "never-held-out.json"  # data/: per init, the rows its fine-tuning never holds out

# -- data ------------------------------------------------------------------------------------------
class TransferGrid(TransferInits, Grid):
    """The cells of a :class:`TransferConfig` (see the module docstring): one per (task, init,
    protocol, label fraction, seed, fold), run by :func:`~retinassl.sweeps.grid.run_grid`."""

    key = ("task", "init", "protocol", "fraction", "seed", "fold")

    def __init__(self, data: dict[str, Any], run: RunDir) -> None:
        super().__init__(run)
        self.config = config = TransferConfig.model_validate(data)
        self.data_dir = run.sub("data")
        self.cache = Cache(config.data.cache_dir)
        self._prepared: PreparedData | None = None
        self._plan: dict[str, dict[str, Any]] | None = None
        self._features: dict[Any, Any] = {}
        self._external: list[ExternalSet] | None = None
        self._annotated = {}

    # -- downstream data ---------------------------------------------------------------------
    def downstream(self) -> PreparedData:
        """The cleaned, prepared downstream data (cleaning recorded in ``data/``)."""
        if self._prepared is None:
            self._prepared = prepare_downstream(self.config, self.data_dir)
        return self._prepared

    def externals(self, task: TaskSpec | None = None) -> list[ExternalSet]:
        """The prepared ``evaluate_on`` datasets (:mod:`~retinassl.sweeps.transfer_external`), or
        those that evaluate ``task``'s models."""
        if self._external is None:
            self._external = [prepare_external(self.config, s, self.cache, self.run) for s in self.config.evaluate_on]
        return [e for e in self._external if task is None or e.task.name == task.name]

    # -- the grid ----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What the done cells depend on beyond their key: the downstream data (its source and
        options, not where its folder is) and cleaning, preprocessing, encoder, the seed of the splits
        and folds, each task's definition, and each protocol's settings. More seeds, fractions,
        tasks or inits only add cells."""
        config = self.config
        out: dict[str, Any] = {
            "data": data_settings(config.data), "dedupe": config.dedupe,
            "preprocess": config.preprocess.model_dump(mode="json"),
            "model": config.model.model_dump(mode="json"), "seed": config.seed, "folds": config.folds,
            "tasks": {t.name: t.model_dump(mode="json") for t in config.tasks}}
        if {"probe", "finetune"} & set(config.protocols):  # a fine-tuning head can start at the probe
            out["probe"] = config.probe.model_dump(mode="json")
        if "finetune" in config.protocols:
            out["finetune"] = config.finetune.model_dump(mode="json")
            out["finetune_tuning"] = (None if config.finetune_tuning is None
                                      else config.finetune_tuning.model_dump(mode="json"))
            out["engine"] = config.engine.result_settings()
        return out

    def setting_defaults(self) -> dict[str, Any]:
        """Fine-tuning and probe fields added after a run started (e.g. ``tta``) are at their defaults there,
        but for the probe's ``inner_cv``: such a run chose ``C`` on folds over the rows (``rows``)."""
        return {"finetune": FinetuneConfig().model_dump(mode="json"),
                "probe": earlier_probe_settings()}

    def settings_not_used_yet(self) -> set[str]:
        """A protocol's settings while none of its cells is done (all settings while no cell is)."""
        done = {cell[self.key.index("protocol")] for cell in self.done()}
        if not done:
            return set(self.settings())
        unused = set()
        if "finetune" not in done:
            unused |= {"finetune", "finetune_tuning", "engine"}
            if "probe" not in done:
                unused.add("probe")
        return unused

    def prepare(self) -> None:
        """The cleaned downstream data, the pool, and every pretraining, before any cell."""
        config = self.config
        check_encoder_inputs(config)  # each given encoder was trained on inputs prepared as these
        self.check_encoders_kept()
        write_text(self.run.path / "transfer.yaml", to_yaml(config))
        self.downstream()
        if config.evaluate_on:  # external images that are copies of downstream or pool images: warned
            others = {"downstream": self.downstream().manifest}
            if any(i.pretrain is not None and i.pool == "unlabelled" for i in config.inits):
                others["pool"] = self.pool()
            for data in self.externals():
                warn_overlap(data, others, self.cache, self.run)
        if any(i.pretrain is not None and i.pool == "unlabelled" for i in config.inits):
            self.cache.prepare(self.pool(), config.preprocess, workers=max(1, config.data.workers),
                               mask_columns=[], skip_bad=config.data.skip_bad)
        for spec in config.inits:
            self.check_pretraining(spec.name, self.model_of(spec).init)
        self.record_encoders()
        if "finetune" in config.protocols:
            self.check_held_out_rule()
        if config.finetune_tuning is not None and "finetune" in config.protocols:
            check_settings(config, self.run, {s.name: str(self.model_of(s).init) for s in config.inits})
            for spec in config.inits:  # every init's setting chosen on training images, before any cell
                tune_init(config, self.run, self.downstream(), spec, self.model_of(spec), self.annotated_of(spec))

    def check_held_out_rule(self) -> None:
        """Record per init (``data/never-held-out.json``) how many downstream rows its fine-tuning never
        holds out (:meth:`annotated_of`). Refused: an init whose count changed since it was recorded, and
        an init whose fine-tuning began before the record existed (a done cell, a tuning run, or the
        checkpoint of either) with rows to keep out (it held them out then). Inits that have not begun
        are recorded as they come."""
        path = self.data_dir / HELD_OUT_FILE
        recorded = json.loads(path.read_text()).get("never_held_out", {}) if path.is_file() else {}
        counts = {spec.name: int(self.annotated_of(spec).sum()) for spec in self.config.inits}
        began = self._finetuning_began()
        changed = sorted(name for name, n in counts.items()
                         if (recorded[name] != n if name in recorded else (name in began and n > 0)))
        if changed:
            raise ConfigError(
                f"this run's fine-tuning of {', '.join(changed)} began when other validation images could be held "
                f"out ({path.name} records the images whose labels or masks each init's pretraining read, "
                f"{ {name: recorded.get(name, 'not recorded') for name in changed} }, now "
                f"{ {name: counts[name] for name in changed} }): its done cells would be mixed with cells "
                "validated otherwise; start a new run")
        merged = {**recorded, **counts}
        if merged != recorded or not path.is_file():
            write_text(path, json.dumps({"never_held_out": merged}, indent=2, sort_keys=True))

    def _finetuning_began(self) -> set[str]:
        """The inits with a done fine-tuning cell, a tuning run, or a fine-tuning or tuning checkpoint."""
        done = self.done()
        began = {str(c["init"]) for c in self.cells() if c["protocol"] == "finetune" and (
            self.cell_key(c) in done or (self.run.path / "cells" / self.cell_name(c) / "checkpoints").is_dir())}
        table = self.data_dir / "tuning.csv"
        if table.is_file():
            began |= set(pd.read_csv(table)["init"].astype(str))
        for spec in self.config.inits:
            if any((w / "checkpoints").is_dir() for w in tuning_workdirs(self.run, spec.name)):
                began.add(spec.name)
        return began

    def cells(self) -> list[dict[str, Any]]:
        """Per init, its probe cells and then its fine-tuning cells."""
        config = self.config
        if self._plan is None:
            self._plan = self.plan(self.downstream().manifest)
        seeds = config.finetune_seeds or config.seeds
        fractions = config.finetune_fractions or config.fractions
        out = []
        for spec in config.inits:
            for protocol in ("probe", "finetune"):
                if protocol not in config.protocols:
                    continue
                for p in self._plan.values():
                    for c in p["cells"]:
                        if protocol == "finetune" and (c["seed"] not in seeds or c["fraction"] not in fractions):
                            continue
                        out.append({"task": p["task"].name, "init": spec.name, "protocol": protocol,
                                    "fraction": c["fraction"], "seed": c["seed"], "fold": c["fold"],
                                    "spec": spec, "task_spec": p["task"], "cell": c})
        return out

    def cell_name(self, cell: Mapping[str, Any]) -> str:
        name = f"{cell['task']}-{cell['init']}-f{fraction_tag(cell['fraction'])}-s{cell['seed']}" + (
            "" if cell["fold"] is None else f"-k{cell['fold']}")
        return name if cell["protocol"] == "finetune" else f"probe-{name}"

    def done_rows(self, results: pd.DataFrame) -> pd.DataFrame:
        return results[(results["metric"] == "n_test") & results["protocol"].isin(["probe", "finetune"])]

    def run_cell(self, cell: Mapping[str, Any]) -> None:
        engine = self.config.engine
        apply_threads(engine.num_threads, sharing=sharing_processes(engine.devices))
        model = self.model_of(cell["spec"])
        if cell["protocol"] == "probe":
            self.probe_cell(cell["spec"], model, cell["task_spec"], cell["cell"])
        else:
            self.finetune_cell(cell["spec"], model, cell["task_spec"], cell["cell"])

    def finish(self) -> None:
        """t-SNE and Grad-CAM figures and the comparison table."""
        self.figures(self.downstream())
        from retinassl.metrics.compare import write_comparison

        table = write_comparison(self.run, with_external_tasks(self.config))
        write_external_table(self.run, table, self.config)

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
                scores: np.ndarray, extra: dict[str, float],
                external: list[tuple[ExternalSet, np.ndarray]] = ()) -> dict[str, float]:
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
                           seed=cell["seed"], fold=fold_value(cell["fold"]), metric=k, value=v)
                for k, v in metrics.items()]
        for data, data_scores in external:  # appended with the cell's rows: done together or not at all
            rows += external_rows(self.run, data, rows[0], cell, data_scores)
        append_results(self.run.results_file, rows)
        return metrics

    def features_of(self, spec: InitSpec, model: ModelConfig, data: ExternalSet | None = None) -> Any:
        """The frozen features of an init (extracted, or read from the feature cache, once per
        process; their cost is recorded the first time), of the downstream or an external ``data``."""
        key = spec.name if data is None else (spec.name, data.spec.name)
        if key not in self._features:
            config = self.config
            features = self.frozen_features(model, self.downstream() if data is None else data.prepared)
            if data is None:  # the extraction cost of the downstream features
                append_results(self.run.results_file, [
                    result_row(experiment=config.name, task="features", method="extract", init=spec.name,
                               protocol="probe", seed=config.seed, metric=m, value=v)
                    for m, v in {"extract_seconds": features.seconds,
                                 "extracted_images": float(features.extracted),
                                 "feature_dim": float(features.values.shape[1])}.items()])
            self._features[key] = features
        return self._features[key]

    def probe_cell(self, spec: InitSpec, model: ModelConfig, task: TaskSpec, cell: dict[str, Any]) -> None:
        """A linear probe on the init's frozen features."""
        config = self.config
        prepared = self.downstream()
        features = self.features_of(spec, model)
        start = time.perf_counter()
        targets = task.targets(prepared.manifest)
        externals = self.externals(task)  # scored by the same probe (it scales by its training rows only)
        tested = [features.values[cell["test"]], *[self.features_of(spec, model, e).values for e in externals]]
        rows = cell["rows"]  # C chosen on folds of their patients, never validated on images the pretraining annotated
        scores, cs = fit_probe(features.values[rows], targets[rows], np.concatenate(tested), task,
                               task.classes(prepared.manifest), config.probe, cell["seed"],
                               groups=prepared.manifest.patients[rows], always_fitted=self.annotated_of(spec)[rows])
        seconds = time.perf_counter() - start
        finite = [c for c in cs if np.isfinite(c)]
        parts = np.split(scores, np.cumsum([len(t) for t in tested])[:-1])
        metrics = self._record(spec, "probe", task, cell, parts[0],
                               {"seconds": seconds, "C": float(np.median(finite)) if finite else math.nan},
                               list(zip(externals, parts[1:])))
        log.info("probe %s %s f=%s seed=%s fold=%s: %s %.3f", spec.name, task.name,
                 fraction_tag(cell["fraction"]), cell["seed"], cell["fold"], task.primary,
                 metrics.get(task.primary, math.nan))

    def finetune_cell(self, spec: InitSpec, model: ModelConfig, task: TaskSpec, cell: dict[str, Any]) -> None:
        """One fine-tuning; the classifier of the explained task at the largest fraction, first
        seed and first fold is kept (``models/<task>-<init>``) for Grad-CAM."""
        config = self.config
        prepared = self.downstream()
        seeds = config.finetune_seeds or config.seeds
        fractions = config.finetune_fractions or config.fractions
        explain_task = config.explain.task or config.tasks[0].name
        workdir = self.run.path / "cells" / self.cell_name(
            {"task": task.name, "init": spec.name, "protocol": "finetune", **cell})
        resume = (workdir / "checkpoints").is_dir()
        result = finetune(model, prepared, cell["rows"], cell["test"], task,
                          tuned_finetune(config, self.run, spec.name), config.engine, workdir, cell["seed"],
                          resume=resume, probe=config.probe, never_held_out=self.annotated_of(spec))
        from retinassl.jobs.finetune import predict

        external = [(e, predict(result.method, e.prepared, np.arange(len(e.prepared)))) for e in self.externals(task)]
        metrics = self._record(spec, "finetune", task, cell, result.scores, {
            "seconds": result.seconds, "steps": float(result.steps),
            "val_size": float(len(result.val_rows)),
            "best_epoch": float(result.best.get("epoch", math.nan))}, external)
        log.info("finetune %s %s f=%s seed=%s fold=%s: %s %.3f (%d steps, %.0f s)", spec.name,
                 task.name, fraction_tag(cell["fraction"]), cell["seed"], cell["fold"],
                 task.primary, metrics.get(task.primary, math.nan), result.steps, result.seconds)
        if (task.name == explain_task and cell["fraction"] == max(fractions) and cell["seed"] == seeds[0]
                and cell["fold"] in (None, 0)):
            initial_meta = _arch_of(model)
            extra: dict[str, Any] = {"init_name": spec.name, "precision": result.precision, **published_meta(model)}
            val = np.asarray(result.val_rows, dtype=int)
            if task.kind == "binary" and len(val):
                from retinassl.jobs.finetune import predict
                from retinassl.metrics.classification import operating_point

                val_labels = task.targets(prepared.manifest)[val]
                if len(np.unique(val_labels)) == 2:
                    extra["operating_point"] = operating_point(val_labels, predict(result.method, prepared, val))
            save_classifier(self.run.path / "models" / f"{task.name}-{spec.name}", result.method,
                            arch=initial_meta[0], kwargs=initial_meta[1],
                            preprocess=config.preprocess.model_dump(), task=task, extra=extra)
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
            from retinassl.explain.embedding import tsne_figure

            rows = task.labelled_rows(prepared.manifest)
            for spec in config.inits:
                path = figures / f"tsne-{spec.name}.png"
                if path.is_file():
                    continue
                features = self.frozen_features(self.model_of(spec), prepared)
                tsne_figure(features.values[rows], class_labels(task, prepared.manifest)[rows], path,
                            title=f"{spec.name}: frozen embeddings ({task.name})", seed=config.seed)
        if config.explain.gradcam and "finetune" in config.protocols:
            from retinassl.explain.gradcam import gradcam_gallery

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
    from retinassl.models.checkpoint import read_encoder_meta

    path = Path(model.init)
    if path.is_dir() or path.name == META or path.name in LEGACY:
        meta = read_encoder_meta(path)
        return meta["arch"], dict(meta["kwargs"])
    return model.arch, dict(model.kwargs)


def run_transfer(config: TransferConfig, run: RunDir) -> None:
    """Run (or complete) the sweep of ``config`` in ``run``, in ``config.workers`` processes."""
    config.check()
    run_grid(TransferGrid, (config.model_dump(mode="json"),), run, workers=config.workers, name="transfer")


def transfer_runner(data: dict[str, Any], run: RunDir, budget: str, resume: bool) -> None:
    """The ``transfer`` kind of ``retinassl sweep`` (see :func:`retinassl.cli.sweep.runners`)."""
    config = resolve_config(data, budget)
    if not resume and TransferGrid(config.model_dump(mode="json"), run).done():
        raise DataError("the run directory already holds results; use --resume", path=run.path)
    run_transfer(config, run)

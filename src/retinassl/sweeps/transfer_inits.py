"""The initialisations of the transfer sweep: the cleaned pretraining pool, the pretraining runs
(including the two-step variant, which continues from an earlier initialisation's encoder) and the
check that an encoder was not pretrained on a test image. :class:`TransferInits` is the part of
:class:`~retinassl.sweeps.transfer.TransferGrid` that owns them; it uses the grid's ``config``,
``run``, ``data_dir``, ``cache`` and ``downstream()``."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from retinassl.atomic import write_bytes, write_text
from retinassl.config import ModelConfig
from retinassl.data.loading import load_manifest
from retinassl.data.leakage import clean_pool, content_digests
from retinassl.data.manifest import Manifest
from retinassl.errors import ConfigError, DataError
from retinassl.data.cache import PreparedData
from retinassl.jobs.features import Features, extract_features
from retinassl.jobs.probe import assert_frozen, fit_probe
from retinassl.metrics.tasks import TaskSpec
from retinassl.io.results import append_results, read_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import is_saved_model
from retinassl.models.initialize import same_weights, seeded_initial_encoder, weights_identity
from retinassl.models.vit_transfer import set_pooling
from retinassl.sweeps.transfer_config import InitSpec
from retinassl.sweeps.transfer_data import annotated_in_pretraining, training_holdout

log = logging.getLogger(__name__)
ENCODERS_FILE = "encoders.json"
SELECTION_SEEDS = 5            # held-out splits a pretraining seed is scored on (a probe takes seconds)
SELECTION_VAL_FRACTION = 0.25  # share of the training patients each holds out (as finetune_tuning's default)


def selection_file(run: RunDir, init: str) -> Path:
    """The record of ``init``'s pretraining-seed choice (``pretrain_seeds``)."""
    return run.path / "data" / f"pretrain-selection-{init}.json"


def selection_records(run: RunDir) -> list[dict]:
    """Every init's pretraining-seed record of a run: task, metric, each seed's scores, the chosen seed."""
    return [json.loads(p.read_text()) for p in sorted((run.path / "data").glob("pretrain-selection-*.json"))]


class TransferInits:
    """Pool, pretraining and pretraining-leak check of the transfer sweep's initialisations."""

    _annotated: dict[str | None, np.ndarray]  # init -> :meth:`annotated`, set by the grid

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
        """Run (or reuse, or resume) the pretraining of ``spec``; returns its encoder directory
        (``pretrain/<name>/encoder``). With ``pretrain_seeds``, one pretraining per seed
        (``pretrain/<name>/seed-<s>``), then the one :meth:`selected` on validation is copied there."""
        folder = self.run.path / "pretrain" / spec.name
        encoder_dir = folder / "encoder"
        if is_saved_model(encoder_dir):
            return encoder_dir
        if spec.pretrain_seeds is None:
            return self._pretrain(spec, folder, None)
        task = self.config.choice_task()
        self.selection_holdouts(task, None)  # refused now (k-fold, too few patients), not after the pretrainings
        candidates = {seed: self._pretrain(spec, folder / f"seed-{seed}", seed) for seed in spec.pretrain_seeds}
        annotated = self.annotated_by_candidates(spec, candidates)
        return self.selected(spec, candidates, task, self.selection_holdouts(task, annotated), annotated)

    def annotated_by_candidates(self, spec: InitSpec, candidates: dict[int, Path]) -> np.ndarray:
        """``(N,)`` True for the downstream rows whose labels or masks any candidate encoder's pretraining
        read (:meth:`annotated`), or that of the init a two-step ``spec`` continued from."""
        annotated = np.zeros(len(self.downstream().manifest), dtype=bool) | self._first_step_annotated(spec)
        for path in candidates.values():
            annotated = annotated | self.annotated(str(path))
        return annotated

    def _pretrain(self, spec: InitSpec, folder: Path, seed: int | None) -> Path:
        """One pretraining run of ``spec`` in ``folder`` (``seed``: instead of the configured one)."""
        from retinassl.jobs.pretrain import run_pretrain

        config = self.config
        encoder_dir = folder / "encoder"
        if is_saved_model(encoder_dir):
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
        if seed is not None:
            pretrain_config = pretrain_config.model_copy(update={"seed": seed,
                                                                 "name": f"{pretrain_config.name}-seed{seed}"})
        first = config.init_named(spec.init)
        if first is None and spec.init != "scratch" and not Path(spec.init).exists():
            raise ConfigError(f"init {spec.name}: init {spec.init!r} is neither 'scratch', an initialisation of this "
                              f"sweep {[i.name for i in config.inits]} nor a file or directory that exists (a "
                              "two-step initialisation needs its first step in the sweep, or its encoder as a path)")
        # two-step: continue from an earlier initialisation's encoder, or from a given one
        begin = str(self.model_of(first).init) if first is not None else spec.init
        if begin != "scratch":
            model = pretrain_config.model.model_copy(update={"init": begin})
            pretrain_config = pretrain_config.model_copy(update={"model": model})
        resume = (folder / "run.json").is_file()
        prun = RunDir.resume(folder) if resume else _new_rundir(folder, pretrain_config.name)
        log.info("init %s: pretraining %s on %d images%s%s", spec.name, pretrain_config.method_name,
                 len(pool), "" if seed is None else f", seed {seed}", " (resuming)" if resume else "")
        start = time.perf_counter()
        out = run_pretrain(pretrain_config, prun, resume=resume, manifest=pool)
        prun.update_status(status="finished")
        rows = []
        if prun.results_file.is_file():
            table = read_results(prun.results_file)
            rows = [result_row(experiment=config.name, task="pretrain", method=str(r.method), init=spec.name,
                               protocol="pretrain", seed=pretrain_config.seed, metric=str(r.metric),
                               value=float(r.value))
                    for r in table.itertuples()]
        # the images this pretraining used (its own manifest: an init's splits/label select rows)
        used = prun.path / "manifest.csv"
        size = len(Manifest.load(used)) if used.is_file() else len(pool)
        rows.append(result_row(experiment=config.name, task="pretrain", method=pretrain_config.method_name,
                               init=spec.name, protocol="pretrain", seed=pretrain_config.seed,
                               metric="pool_size", value=float(size)))
        append_results(self.run.results_file, rows)
        if seed is None:  # pretrain_seeds: the kept seed's, once chosen
            self._copy_figures(spec, prun.path)
        log.info("init %s: pretrained in %.0f s", spec.name, time.perf_counter() - start)
        return out

    def selection_holdouts(self, task: TaskSpec, annotated: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``(fitted, held-out)`` training rows a pretraining seed is chosen on, one per selection seed;
        the patients of ``annotated`` rows (:meth:`annotated`) are never held out."""
        config = self.config
        manifest = self.downstream().manifest
        return [training_holdout(manifest, task, config.folds, config.seed, SELECTION_VAL_FRACTION,
                                 config.seed + k, "pretrain_seeds", annotated) for k in range(SELECTION_SEEDS)]

    def annotated(self, init: str | None) -> np.ndarray:
        """``(N,)`` True for the downstream rows whose labels or masks the pretraining of the encoder
        ``init`` read (:func:`~retinassl.sweeps.transfer_data.annotated_in_pretraining`): a choice made
        on held-out training images (a pretraining seed, fine-tuning settings, early stopping) never
        holds these out, nor their patients."""
        if init not in self._annotated:
            manifest = self.downstream().manifest
            self._annotated[init] = annotated_in_pretraining(
                init, manifest, lambda: content_digests(manifest, self.cache.memo))
        return self._annotated[init]

    def annotated_of(self, spec: InitSpec) -> np.ndarray:
        """:meth:`annotated` of ``spec``'s encoder, with those of the sweep's initialisation a two-step
        ``spec`` continued from (followed through the sweep, wherever its run directory now lies)."""
        return self.annotated(str(self.model_of(spec).init)) | self._first_step_annotated(spec)

    def _first_step_annotated(self, spec: InitSpec) -> np.ndarray | np.bool_:
        """:meth:`annotated_of` the init a two-step ``spec`` continued from (``False`` for none)."""
        first = self.config.init_named(spec.init) if spec.pretrain is not None else None
        return self.annotated_of(first) if first is not None else np.False_

    def frozen_features(self, model: ModelConfig, prepared: PreparedData) -> Features:
        """The pooled embeddings of every row of ``prepared`` by the initial encoder of ``model``, frozen,
        with the probe's pooling (from the feature cache when they were extracted before)."""
        encoder = set_pooling(seeded_initial_encoder(model, self.config.seed).encoder, self.config.probe.pooling)
        with assert_frozen(encoder):
            return extract_features(encoder, prepared, self.config.data.cache_dir)

    def selection_scores(self, encoder_dir: Path, task: TaskSpec, holdouts: list[tuple[np.ndarray, np.ndarray]],
                         annotated: np.ndarray | None = None) -> list[float]:
        """The linear probe of ``encoder_dir``'s frozen features (the sweep's ``probe`` settings) fitted
        on the training images beside the held-out patients and scored on them (``task``'s primary
        metric), one value per held-out split (:meth:`selection_holdouts`); its ``C`` is chosen on
        folds of the fitted patients that never validate on the ``annotated`` rows (``(N,)`` bool)."""
        config = self.config
        prepared = self.downstream()
        features = self.frozen_features(config.model.model_copy(update={"init": str(encoder_dir)}), prepared).values
        targets = task.targets(prepared.manifest)
        classes = task.classes(prepared.manifest)
        out = []
        for k, (fitted, held_out) in enumerate(holdouts):
            scores, _ = fit_probe(features[fitted], targets[fitted], features[held_out], task, classes,
                                  config.probe, config.seed + k, groups=prepared.manifest.patients[fitted],
                                  always_fitted=None if annotated is None else annotated[fitted])
            out.append(float(task.metrics(targets[held_out], scores).get(task.primary, math.nan)))
        return out

    def selected(self, spec: InitSpec, candidates: dict[int, Path], task: TaskSpec,
                 holdouts: list[tuple[np.ndarray, np.ndarray]], annotated: np.ndarray) -> Path:
        """Keep the candidate encoder (pretraining seed -> encoder directory) with the best mean
        validation score (:meth:`selection_scores`; the earlier seed on a tie, never one scoring NaN;
        ``annotated``: ``(N,)`` bool, the downstream rows the held-out splits never held out, with their
        patients' other images, their labels or masks having been read by the pretraining; nor does the
        probe's choice of ``C``):
        recorded in ``data/pretrain-selection-<name>.json`` and as ``selection_<metric>`` / ``selected``
        rows (one per seed) of the results, then copied to ``pretrain/<name>/encoder`` (with its
        pretraining manifest and figures), which every cell uses. A run killed after the choice was
        recorded copies the recorded choice: it is not made again."""
        record_path = selection_file(self.run, spec.name)
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        if record is None:
            start = time.perf_counter()
            scores = {seed: self.selection_scores(path, task, holdouts, annotated) for seed, path in candidates.items()}
            means = {seed: float(np.mean(v)) for seed, v in scores.items()}
            finite = [seed for seed in candidates if math.isfinite(means[seed])]
            if not finite:
                raise DataError(f"init {spec.name}: no pretraining seed gave a validation {task.primary} (a "
                                "held-out split with one class?)", path=self.data_dir)
            best = max(finite, key=lambda seed: means[seed])  # max keeps the first of equal values
            method = self.config.pretrain_config(spec, Path("pool.csv")).method_name
            rows = [result_row(experiment=self.config.name, task="pretrain", method=method, init=spec.name,
                               protocol="pretrain", seed=seed, metric=metric, value=value)
                    for seed in candidates
                    for metric, value in ((f"selection_{task.primary}", means[seed]),
                                          ("selected", float(seed == best)))]
            rows.append(result_row(experiment=self.config.name, task="pretrain", method="selection", init=spec.name,
                                   protocol="pretrain", seed=self.config.seed, metric="selection_seconds",
                                   value=time.perf_counter() - start))
            record = {"init": spec.name, "task": task.name, "metric": task.primary,
                      "val_fraction": SELECTION_VAL_FRACTION, "selection_seeds": SELECTION_SEEDS,
                      "never_held_out": int(np.asarray(annotated).sum()), "probe_inner_cv": self.config.probe.inner_cv,
                      "candidates": [{"seed": seed, "scores": scores[seed], "mean": means[seed]}
                                     for seed in candidates], "chosen": best}
            append_results(self.run.results_file, rows)  # rows, then the record: a kill between them redoes both
            write_text(record_path, json.dumps(record, indent=2))
        elif [c["seed"] for c in record["candidates"]] != list(candidates):
            raise ConfigError(f"init {spec.name}: pretrain_seeds {list(candidates)}, but this run chose among seeds "
                              f"{[c['seed'] for c in record['candidates']]} ({record_path}); start a new run")
        elif record.get("probe_inner_cv", "rows") != self.config.probe.inner_cv:  # chosen before the field: rows
            raise ConfigError(f"init {spec.name}: this run chose its pretraining seed with the probe's C from "
                              f"probe.inner_cv={record.get('probe_inner_cv', 'rows')} ({record_path}), not "
                              f"{self.config.probe.inner_cv}: resume it with that setting, or start a new run")
        best = int(record["chosen"])
        log.info("init %s: pretraining seed %d kept (validation %s %s)", spec.name, best, record["metric"],
                 ", ".join(f"seed {c['seed']} {c['mean']:.3f}" for c in record["candidates"]))
        folder = self.run.path / "pretrain" / spec.name
        chosen = candidates[best]
        if (chosen.parent / "manifest.csv").is_file():
            write_bytes(folder / "manifest.csv", (chosen.parent / "manifest.csv").read_bytes())
        self._copy_figures(spec, chosen.parent)
        staging = folder / ".encoder.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(chosen, staging)
        shutil.rmtree(folder / "encoder", ignore_errors=True)  # an incomplete one (not a saved model)
        os.replace(staging, folder / "encoder")  # a killed copy leaves no encoder, and is redone
        return folder / "encoder"

    def _copy_figures(self, spec: InitSpec, pretraining: Path) -> None:
        """A pretraining's own figures (an MAE's reconstructions) into the sweep's report."""
        for figure in sorted((pretraining / "report" / "figures").glob("reconstructions-*.png")):
            write_bytes(self.run.report_dir / "figures" / f"reconstructions-{spec.name}.png", figure.read_bytes())

    def recorded_encoders(self) -> dict[str, str]:
        """``data/encoders.json``: each pretrained init's weights (:func:`weights_identity`)."""
        path = self.data_dir / ENCODERS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def record_encoders(self) -> None:
        """Record the weights of every pretrained init whose encoder exists (after the pretraining)."""
        recorded = self.recorded_encoders()
        now = {spec.name: weights_identity(str(self.run.path / "pretrain" / spec.name / "encoder"))
               for spec in self.config.inits
               if spec.pretrain is not None and is_saved_model(self.run.path / "pretrain" / spec.name / "encoder")}
        merged = {**recorded, **{k: v for k, v in now.items() if k not in recorded}}
        if merged != recorded:
            write_text(self.data_dir / ENCODERS_FILE, json.dumps(merged, indent=2, sort_keys=True))

    def check_encoders_kept(self) -> None:
        """Before anything runs: every pretrained initialisation the run has results of still has the
        encoder they came from. Refused: an encoder whose weights differ from those recorded when it
        was pretrained (``data/encoders.json``: another encoder put in its place), and an init with
        results (rows of any protocol, its tuning record, its pretraining's rows, its recorded weights)
        whose encoder is gone (a run restored from an archive, which holds no weights; a deleted
        folder) with no checkpoint to resume from: pretraining it again would give another encoder
        than the one those results came from, and the run would mix the two."""
        rows = read_results(self.run.results_file) if self.run.results_file.is_file() else None
        recorded = self.recorded_encoders()
        for spec in self.config.inits:
            folder = self.run.path / "pretrain" / spec.name
            if spec.pretrain is None:
                continue
            if is_saved_model(folder / "encoder"):
                if spec.name in recorded and not same_weights(recorded[spec.name],
                                                                weights_identity(str(folder / "encoder"))):
                    raise ConfigError(f"init {spec.name}: the encoder in {folder / 'encoder'} is not the one this "
                                      "run's results of it came from (its weights differ from those recorded in "
                                      f"data/{ENCODERS_FILE}); put that one back, or start a new run")
                continue
            if spec.pretrain_seeds is None and any(folder.glob("seed-*/run.json")):
                raise ConfigError(f"init {spec.name}: {folder} holds pretrainings of several seeds, but the init "
                                  "has no pretrain_seeds now; give the same pretrain_seeds, or start a new run")
            if any((folder / "checkpoints").glob("*")) or any(folder.glob("seed-*/run.json")):
                continue  # resumable (pretrain_seeds: its seeds' runs, then the recorded choice)
            traces = [what for what, there in [
                ("rows in results.csv", rows is not None and (rows["init"].astype(str) == spec.name).any()),
                (f"data/tuning-{spec.name}.json", (self.data_dir / f"tuning-{spec.name}.json").is_file()),
                (f"pretrain/{spec.name}/results.csv", (folder / "results.csv").is_file()),
                (f"data/{ENCODERS_FILE}", spec.name in recorded)] if there]
            if traces:
                raise ConfigError(f"init {spec.name}: {self.run.path} has results of it ({', '.join(traces)}) but "
                                  f"not its encoder ({folder / 'encoder'}; an archive holds no weights): pretraining "
                                  "it again would give another encoder. Put the same encoder there, or start a new "
                                  "run with it as the init's encoder")

    def check_pretraining(self, name: str, init: str | None) -> None:
        """Warn (naming both images) when an encoder recorded that it was pretrained on a test
        image, a byte-identical copy of one, or its patient (:func:`~retinassl.data.leakage.
        seen_in_pretraining`); the pairs go to ``data/pretraining-leaks-<init>.csv``."""
        from retinassl.data.leakage import PRETRAINING_KEY, seen_in_pretraining, warn_seen_in_pretraining

        if not init or not is_saved_model(Path(init)):
            return
        from retinassl.models.checkpoint import read_encoder_meta

        record = read_encoder_meta(init).get(PRETRAINING_KEY)
        if not record:
            return
        manifest = self.downstream().manifest
        is_test = (manifest.frame["split"].astype(str) == "test").to_numpy()
        test = manifest.subset(is_test) if is_test.any() else manifest  # k-fold: every image is tested
        seen = seen_in_pretraining(record, test, content_digests(test, self.cache.memo))
        if len(seen):
            warn_seen_in_pretraining(seen, name)
            write_text(self.data_dir / f"pretraining-leaks-{name}.csv", seen.to_csv(index=False))


def _new_rundir(folder: Path, name: str) -> RunDir:
    folder.mkdir(parents=True, exist_ok=True)
    run = RunDir(folder)
    run.update_status(status="running", name=name)
    return run

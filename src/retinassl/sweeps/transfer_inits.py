"""The initialisations of the transfer sweep: the cleaned pretraining pool, the pretraining runs
(including the two-step variant, which continues from an earlier initialisation's encoder) and the
check that an encoder was not pretrained on a test image. :class:`TransferInits` is the part of
:class:`~retinassl.sweeps.transfer.TransferGrid` that owns them; it uses the grid's ``config``,
``run``, ``data_dir``, ``cache`` and ``downstream()``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from retinassl.atomic import write_bytes, write_text
from retinassl.config import ModelConfig
from retinassl.data.loading import load_manifest
from retinassl.data.leakage import clean_pool, content_digests
from retinassl.data.manifest import Manifest
from retinassl.errors import ConfigError
from retinassl.io.results import append_results, read_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import is_saved_model
from retinassl.models.initialize import same_weights, weights_identity
from retinassl.sweeps.transfer_config import InitSpec

log = logging.getLogger(__name__)
ENCODERS_FILE = "encoders.json"


class TransferInits:
    """Pool, pretraining and pretraining-leak check of the transfer sweep's initialisations."""

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
        from retinassl.jobs.pretrain import run_pretrain

        config = self.config
        folder = self.run.path / "pretrain" / spec.name
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
        # the images this pretraining used (its own manifest: an init's splits/label select rows)
        used = prun.path / "manifest.csv"
        size = len(Manifest.load(used)) if used.is_file() else len(pool)
        rows.append(result_row(experiment=config.name, task="pretrain", method=pretrain_config.method_name,
                               init=spec.name, protocol="pretrain", seed=config.seed,
                               metric="pool_size", value=float(size)))
        append_results(self.run.results_file, rows)
        for figure in sorted((prun.report_dir / "figures").glob("reconstructions-*.png")):  # an MAE's, for the report
            write_bytes(self.run.report_dir / "figures" / f"reconstructions-{spec.name}.png", figure.read_bytes())
        log.info("init %s: pretrained in %.0f s", spec.name, time.perf_counter() - start)
        return out

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
            if any((folder / "checkpoints").glob("*")):
                continue
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

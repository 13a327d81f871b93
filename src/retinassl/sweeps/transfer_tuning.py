"""Fine-tuning settings chosen on validation data only, per initialisation (``finetune_tuning``).

A pretrained initialisation only "beats scratch" if scratch was trained as well as it can be: a
scratch network fine-tuned with a recipe chosen for pretrained weights (few steps, a small learning
rate) is a weak baseline. With ``finetune_tuning`` every initialisation gets its own setting, chosen
the same way and on the training images only:

1. **Tuning split.** Per tuning seed, about ``val_fraction`` of the training patients (stratified by
   the task's classes, never splitting a patient; :func:`~retinassl.data.splits.carve_validation`)
   are held out as the tuning validation set; the test images are never used.
2. **Tuning runs.** From the remaining training images a stratified subset of the size the cells use
   at ``fraction`` is drawn, and each candidate of the grid fine-tunes on it exactly as a cell does
   (its own early-stopping split carved from the subset); the run is scored on the tuning
   validation set with the task's primary metric.
3. **Choice.** The candidate with the best mean score over the tuning seeds wins (the earlier
   candidate on a tie); ``data/tuning-<init>.json`` records every score and the choice, and the
   init's fine-tuning cells use it. Each tuning run appends its row to ``data/tuning.csv`` when it
   ends, so a killed sweep resumes with the runs that are missing.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import write_text
from retinassl.config import ModelConfig
from retinassl.data.cache import PreparedData
from retinassl.engine.threads import apply_threads, sharing_processes
from retinassl.io.archive import RESTORED_FILE
from retinassl.io.rundir import RunDir
from retinassl.jobs.finetune import FinetuneConfig, finetune, remove_workdir
from retinassl.jobs.probe import earlier_probe_settings
from retinassl.metrics.tasks import TaskSpec
from retinassl.models.initialize import same_weights, weights_identity
from retinassl.sweeps.grid import check_unchanged
from retinassl.sweeps.transfer_config import InitSpec, TransferConfig, tuning_candidates
from retinassl.sweeps.transfer_data import label_subsets, training_holdout

log = logging.getLogger(__name__)

COLUMNS = ("init", "candidate", "seed", "metric", "value", "n_fit", "n_val", "steps", "seconds")


def tuning_file(run: RunDir, init: str) -> Path:
    return run.path / "data" / f"tuning-{init}.json"


def tuning_records(run: RunDir) -> list[dict[str, Any]]:
    """Every init's tuning record of a run (``data/tuning-<init>.json``: task, metric, fraction, seeds,
    val_fraction, each candidate's values and mean validation score, the chosen values)."""
    return [json.loads(p.read_text()) for p in sorted((run.path / "data").glob("tuning-*.json"))]


def tuned_finetune(config: TransferConfig, run: RunDir, init: str) -> FinetuneConfig:
    """The fine-tuning settings of ``init``'s cells: ``config.finetune`` with the tuned values
    (``data/tuning-<init>.json``) when ``finetune_tuning`` is set."""
    if config.finetune_tuning is None:
        return config.finetune
    path = tuning_file(run, init)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: the tuning of {init!r} runs before its fine-tuning cells")
    chosen = json.loads(path.read_text())["chosen"]
    return config.finetune.model_copy(update=chosen)


def tuning_rows(prepared: PreparedData, config: TransferConfig, task: TaskSpec, seed: int,
                annotated: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(subset, validation)`` rows of one tuning seed, both from the official training images
    (:func:`~retinassl.sweeps.transfer_data.training_holdout`): the held-out patients (never those of
    the ``annotated`` rows, whose labels or masks the init's pretraining read) and a stratified subset
    of the others as large as a cell's subset at the tuning fraction."""
    tuning = config.finetune_tuning
    manifest = prepared.manifest
    pool, val = training_holdout(manifest, task, config.folds, config.seed, tuning.val_fraction, seed,
                                 "finetune_tuning", annotated)
    size = max(2, math.ceil(tuning.fraction * (len(pool) + len(val))))
    if size > len(pool):
        log.warning("finetune_tuning: a cell at fraction %g has %d images, but only %d remain beside the "
                    "held-out patients; the tuning runs use %d (lower fraction or val_fraction to match)",
                    tuning.fraction, size, len(pool), len(pool))
    fraction = min(1.0, size / len(pool))
    subset = label_subsets(manifest, task, pool, [fraction], seed, None)[fraction]
    return subset, val


def check_settings(config: TransferConfig, run: RunDir, inits: dict[str, str]) -> None:
    """Record what the tuning runs depend on with the run (``data/tuning.settings.json``) the first
    time: the tuning settings, the fine-tuning base, engine and preprocessing, the seed and folds
    (the splits), the tuning task and each init's weights (``inits``: name -> ``model.init``, recorded
    by :func:`weights_identity`; which images are never held out is the sweep's own record,
    :meth:`~retinassl.sweeps.transfer.TransferGrid.check_held_out_rule`); a resumed run where
    any of these differs would mix two tunings:
    refused. A record of an earlier version, which held the weights' path, is upgraded where that
    path still holds the same weights."""
    inits = {name: weights_identity(init) for name, init in inits.items()}
    record = run.path / "data" / "tuning.settings.json"
    if record.is_file():
        recorded = json.loads(record.read_text())
        old = recorded.get("inits") or {}
        upgraded = {name: inits[name] if name in inits and same_weights(value, inits[name]) else value
                    for name, value in old.items()}
        if upgraded != old:
            write_text(record, json.dumps({**recorded, "inits": upgraded}, indent=2, sort_keys=True))
    settings = {**config.finetune_tuning.model_dump(mode="json"),  # type: ignore[union-attr]
                "finetune": config.finetune.model_dump(mode="json"),
                "engine": config.engine.result_settings(), "probe": config.probe.model_dump(mode="json"),
                "preprocess": config.preprocess.model_dump(mode="json"),
                "seed": config.seed, "folds": config.folds, "tuning_task": config.choice_task().name,
                "inits": inits}
    check_unchanged(run.path / "data" / "tuning.settings.json", settings, "finetune_tuning: this run's tuning",
                    defaults={"finetune": FinetuneConfig().model_dump(mode="json"),
                              "probe": earlier_probe_settings()},
                    archived=(run.path / RESTORED_FILE).is_file())


def _done(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(COLUMNS))


def tuning_workdir(run: RunDir, init: str, candidate: int, seed: int) -> Path:
    """Where one tuning run trains (removed when it is done, unless ``keep_workdirs``)."""
    return run.path / "cells" / f"tune-{init}-c{candidate}-s{seed}"


def tuning_workdirs(run: RunDir, init: str) -> list[Path]:
    """Every tuning run directory of ``init`` still on disk (:func:`tuning_workdir`'s names)."""
    pattern = rf"tune-{re.escape(init)}-c\d+-s\d+"
    return [p for p in (run.path / "cells").glob("tune-*") if re.fullmatch(pattern, p.name)]


def tune_init(config: TransferConfig, run: RunDir, prepared: PreparedData, spec: InitSpec,
              model: ModelConfig, annotated: np.ndarray | None = None) -> dict[str, Any]:
    """Run the missing tuning runs of ``spec``, choose, write ``data/tuning-<init>.json``; returns
    the chosen values (``annotated``: rows never held out, by :func:`tuning_rows` nor by each run's
    early stopping). A run that diverges scores NaN, and a candidate with a NaN on any tuning seed is
    not chosen."""
    from retinassl.errors import DataError, TrainingDiverged

    apply_threads(config.engine.num_threads, sharing=sharing_processes(config.engine.devices))
    out = tuning_file(run, spec.name)
    if out.is_file():
        return json.loads(out.read_text())["chosen"]
    tuning = config.finetune_tuning
    task = config.choice_task()
    table = run.path / "data" / "tuning.csv"
    candidates = tuning_candidates(tuning.grid)
    for seed in tuning.seeds:
        subset, val = tuning_rows(prepared, config, task, seed, annotated)
        for k, values in enumerate(candidates):
            done = _done(table)
            if ((done["init"] == spec.name) & (done["candidate"] == k) & (done["seed"] == seed)).any():
                continue
            workdir = tuning_workdir(run, spec.name, k, seed)
            try:
                result = finetune(model, prepared, subset, val, task, config.finetune.model_copy(update=values),
                                  config.engine, workdir, seed, resume=(workdir / "checkpoints").is_dir(),
                                  probe=config.probe, never_held_out=annotated)
            except TrainingDiverged as exc:
                log.warning("tuning %s candidate %d %s seed %d diverged (%s): scored NaN", spec.name, k,
                            values, seed, exc)
                score, steps, seconds = math.nan, math.nan, math.nan
            else:
                labels = task.targets(prepared.manifest)[val]
                score = float(task.metrics(labels, result.scores).get(task.primary, math.nan))
                steps, seconds = result.steps, result.seconds
            row = {"init": spec.name, "candidate": k, "seed": seed, "metric": task.primary, "value": score,
                   "n_fit": len(subset), "n_val": len(val), "steps": steps, "seconds": seconds}
            write_text(table, pd.concat([_done(table), pd.DataFrame([row])], ignore_index=True)
                       .to_csv(index=False))
            log.info("tuning %s candidate %d %s seed %d: validation %s %.3f (%s steps, %.0f s)", spec.name,
                     k, values, seed, task.primary, score, steps, seconds)
            if not config.keep_workdirs:
                remove_workdir(workdir)
    done = _done(table)
    mine = done[done["init"] == spec.name]
    means = [float(mine[mine["candidate"] == k]["value"].mean(skipna=False)) for k in range(len(candidates))]
    if not np.isfinite(means).any():
        raise DataError(f"finetune_tuning: no candidate of {spec.name!r} gave a validation {task.primary} on "
                        "every tuning seed (each diverged or had one class); widen the grid", path=table)
    best = int(np.nanargmax(means))
    record = {"init": spec.name, "task": task.name, "metric": task.primary, "fraction": tuning.fraction,
              "seeds": list(tuning.seeds), "val_fraction": tuning.val_fraction,
              "candidates": [{"values": v, "mean": m} for v, m in zip(candidates, means)],
              "chosen": candidates[best]}
    write_text(out, json.dumps(record, indent=2, default=float))
    log.info("tuning %s: chose %s (validation %s %.3f)", spec.name, candidates[best], task.primary, means[best])
    return candidates[best]

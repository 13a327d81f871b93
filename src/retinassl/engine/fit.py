"""Training on Lightning: devices, precision, checkpoints, exact resume, logs, DDP.

:func:`fit` trains any :class:`~retinassl.methods.base.Method` on a map-style dataset. What it adds:

- **Speed defaults on CPU**: channels-last memory format and bf16 autocast where the processor
  supports it (``precision: auto``); float32 is one setting away (``precision: 32``). The precision
  a run trains with is recorded in its ``run.json`` (``precision``), and a resumed ``auto`` run keeps
  it on another machine: a CPU with bf16 and one without train different models from one seed.
- **Resumable, pickle-free checkpoints** every N steps: Lightning's checkpoint (weights, optimizer
  and loop state, the position in the epoch) is stored as safetensors + JSON
  (:mod:`retinassl.io.tree`). A run killed at any point resumes with ``resume=True`` and, in
  float32, ends with the same weights as an uninterrupted run: the data order is a function of
  (seed, epoch), the sampler skips the batches already done, and every batch reseeds the RNGs from
  (seed, batch number, rank).
- **Divergence guard**: a NaN/inf loss stops training with :class:`TrainingDiverged` after saving
  the last good weights.
- **DDP** through Lightning's strategies (``strategy: ddp``, ``devices``, ``num_nodes``); the
  sampler shards each epoch's permutation over ranks, so each sample is seen once per epoch.
- CSV and TensorBoard logs under the run directory.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from retinassl.config import EngineConfig
from retinassl.errors import RunDirError
from retinassl.hardware import cpu_supports_bf16
from retinassl.methods.base import Method
from retinassl.io.rundir import RunDir
from retinassl.engine.checkpoints import SafetensorsCheckpointIO, StepCheckpoint, latest_checkpoint
from retinassl.engine.loader import ResumableLoader
from retinassl.engine.progress_log import ProgressLog
from retinassl.engine.module import LitMethod

log = logging.getLogger(__name__)


PRECISION_KEY = "precision"  # run.json: the Lightning precision a run trains with


def run_precision(config: EngineConfig, recorded: str | None) -> str:
    """The precision of a run: float32 when ``deterministic``; for a run resumed from a checkpoint with
    ``precision: auto``, the one it started with (``recorded``), so that its parts compute alike on
    machines with and without bf16 (where this device can run it: a GPU's ``16-mixed`` is not kept on
    a CPU, nor bf16 on a GPU without it); else :func:`resolve_precision`. An explicit precision, or
    ``deterministic``, that differs from the recorded one is used, with a warning."""
    chosen = "32-true" if config.deterministic else resolve_precision(config.precision, config.accelerator)
    if not recorded or recorded == chosen:
        return chosen
    if config.precision != "auto" or config.deterministic:
        log.warning("this run started with precision %s and resumes with %s (engine.precision=%s%s): its parts "
                    "compute differently", recorded, chosen, config.precision,
                    ", deterministic" if config.deterministic else "")
        return chosen
    gpu = config.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    runnable = {"32-true", "16-mixed", *(["bf16-mixed"] if torch.cuda.is_bf16_supported() else [])} if gpu \
        else {"32-true", "bf16-mixed"}
    if recorded not in runnable:
        log.warning("this run started with precision %s, which this device cannot run: it resumes with %s, and "
                    "its parts compute differently", recorded, chosen)
        return chosen
    if recorded == "bf16-mixed" and not gpu and not cpu_supports_bf16():
        log.warning("this run started with precision bf16-mixed; this CPU has no bf16, so the resumed part "
                    "emulates it (slower; the last bits may differ from the first part)")
    else:
        log.info("precision %s: the precision this run started with (engine.precision=auto), so that the "
                 "resumed part computes as the first did", recorded)
    return recorded


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning precision string for a config value (``auto`` picks bf16 where supported)."""
    if precision == "32":
        return "32-true"
    if precision == "16":
        return "16-mixed"
    if precision == "bf16":
        return "bf16-mixed"
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    method: Method
    batches: int
    seconds: float
    best: dict[str, float]
    history: Path | None
    precision: str  # the Lightning precision it trained with (``run.json``: ``precision``)


# -- entry point -----------------------------------------------------------------------------------
def fit(method: Method, train: Dataset, *, config: EngineConfig, run: RunDir, seed: int,
        val: Dataset | None = None, resume: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None, drop_last: bool = True,
        num_workers: int = 0, callbacks: list[Any] | None = None) -> FitResult:
    """Train ``method`` on ``train``; checkpoints and logs go to ``run``.

    Args:
        method: the method (its networks are trained in place).
        train: map-style dataset of training items (dicts of tensors).
        config: engine settings.
        run: the run directory.
        seed: run seed (data order and per-batch RNG streams derive from it).
        val: optional validation dataset (uses ``method.validation_outputs/metrics``).
        resume: continue from the newest checkpoint in ``run``.
        collate_fn: batch collation (default: PyTorch's).
        drop_last: drop the last incomplete batch of an epoch.
        num_workers: DataLoader worker processes.
        callbacks: extra Lightning callbacks (e.g. timers in benchmarks).

    Returns:
        :class:`FitResult`; when the method defines ``monitor`` and validation data is given, the
        method ends with the weights of its best validation epoch.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from retinassl.engine.csv_log import KeepingCSVLogger

    from retinassl.engine.threads import THREADS_KEY, apply_threads, sharing_processes

    recorded = run.status() if resume else {}
    threads = apply_threads(config.num_threads, recorded.get(THREADS_KEY), sharing_processes(config.devices))
    ckpt_path = latest_checkpoint(run.checkpoints) if resume else None
    if resume and ckpt_path is None:
        log.warning("no checkpoint in %s: starting from the beginning", run.checkpoints)
    # a run that starts again from the beginning keeps nothing of its first attempt: it takes this machine's precision
    precision = run_precision(config, recorded.get(PRECISION_KEY) if ckpt_path is not None else None)
    if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        run.update_status(**{THREADS_KEY: threads, PRECISION_KEY: precision})
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        # Lightning's start-up chatter (tips, "GPU available: False") is not for our users
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    if len(train) == 0:  # type: ignore[arg-type]
        raise RunDirError("nothing to train on: the training set is empty")
    batch_size = min(config.batch_size, len(train))  # type: ignore[arg-type]
    loader = ResumableLoader(train, batch_size, seed, shuffle=True, drop_last=drop_last,
                             num_workers=num_workers, collate_fn=collate_fn)
    val_loader = None
    if val is not None and len(val) > 0:  # type: ignore[arg-type]
        val_loader = DataLoader(val, batch_size=config.batch_size, shuffle=False,
                                num_workers=num_workers, collate_fn=collate_fn)
    channels_last = config.channels_last is True or (config.channels_last == "auto" and _is_convolutional(method))
    checkpoint_dir = run.checkpoints
    batches_per_epoch = max(1, len(loader))
    module = LitMethod(method, config, seed, loader, channels_last, checkpoint_dir)
    loggers = [KeepingCSVLogger(run.logs, name="", version="csv", flush_logs_every_n_steps=1), TensorBoardLogger(run.logs, name="",
                                                                             version="tensorboard")]
    strategy = config.strategy
    if strategy == "ddp" and len(method.configure_optimizers()) > 1:
        # alternating updates (a GAN's discriminator and generator steps) leave some parameters
        # without gradients in each backward, which DDP must be told about
        strategy = "ddp_find_unused_parameters_true"
    trainer = pl.Trainer(
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=strategy, precision=precision, max_epochs=config.max_epochs,
        logger=loggers,
        callbacks=[StepCheckpoint(config.checkpoint_every_n_steps, checkpoint_dir),
                   *([] if _progress_bar() else [ProgressLog()]), *(callbacks or [])],
        enable_checkpointing=False, plugins=[SafetensorsCheckpointIO()], use_distributed_sampler=False,
        log_every_n_steps=config.log_every_n_steps, check_val_every_n_epoch=config.val_every_n_epochs,
        num_sanity_val_steps=0, deterministic=config.deterministic or None,
        enable_progress_bar=_progress_bar(), enable_model_summary=False, default_root_dir=run.path)
    start = module.part_started = time.perf_counter()
    log.info("training %s: %d batches/epoch per process x %d epochs%s, precision %s, channels_last %s",
             method.name or type(method).__name__, batches_per_epoch, config.max_epochs,
             f" (at most {config.max_steps} steps)" if config.max_steps > 0 else "", precision, channels_last)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
        warnings.filterwarnings("ignore", message=".*TensorBoard support.*")
        warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
        if module.finished_in_epoch is not None and val_loader is not None and method.monitor:
            # its last step's checkpoint predates the validation that followed that step
            trainer.validate(module, dataloaders=val_loader, verbose=False)
    seconds = module.earlier_seconds + time.perf_counter() - start  # every part of a resumed run
    if module.best and method.monitor and module.best_state is None:
        _legacy_best_weights(module, checkpoint_dir)
    if module.best and method.monitor and module.best_state is not None:
        # (after fit, not in on_train_end: Lightning skips that hook when a resumed run was done)
        from retinassl.io.saved_model import load_state_strict

        load_state_strict(method, module.best_state, "the best validation epoch's weights")
    method.to(memory_format=torch.contiguous_format)
    history = run.logs / "csv" / "metrics.csv"
    return FitResult(method, module.batches_done, seconds, module.best,
                     history if history.is_file() else None, precision)


def _legacy_best_weights(module: Any, checkpoint_dir: Path) -> None:
    """A run resumed from a checkpoint of an older version (best weights in a side file, not in
    the checkpoint): take them from the file, or, without it, forget the best epoch."""
    legacy = checkpoint_dir / "best-weights.safetensors"
    if legacy.is_file():
        from retinassl.io.saved_model import read_safetensors

        log.warning("%s: the checkpoint predates stored best weights; using %s", checkpoint_dir, legacy.name)
        module.best_state = read_safetensors(legacy)
    else:
        log.warning("%s: the best validation weights are unknown (a checkpoint of an older version "
                    "without %s); the run ends with its last weights", checkpoint_dir, legacy.name)
        module.best = {}


def _is_convolutional(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def _progress_bar() -> bool:
    from retinassl.progress import progress_enabled

    return progress_enabled()

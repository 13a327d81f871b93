"""Training on Lightning: devices, precision, checkpoints, exact resume, logs, DDP.

:func:`fit` trains any :class:`~retinassl.method.Method` on a map-style dataset. What it adds:

- **Speed defaults on CPU**: channels-last memory format and bf16 autocast where the processor
  supports it (``precision: auto``); float32 is one setting away (``precision: 32``).
- **Resumable, pickle-free checkpoints** every N steps: Lightning's checkpoint (weights, optimizer
  and loop state, the position in the epoch) is stored as safetensors + JSON
  (:mod:`retinassl.tree_io`). A run killed at any point resumes with ``resume=True`` and, in
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
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import EngineConfig
from .errors import RunDirError, TrainingDiverged
from .method import Method
from .rundir import RunDir
from .tree_io import load_tree, save_tree

log = logging.getLogger(__name__)


# -- data order ------------------------------------------------------------------------------------
class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation drawn from (seed, epoch), sharded over DDP ranks.

    Like ``DistributedSampler`` it pads the permutation (by repeating its start) to a multiple of
    the world size, so every rank sees the same number of samples; with a world size dividing the
    dataset size, each sample is seen exactly once per epoch.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.rank = 0
        self.world_size = 1
        self._skip: tuple[int, int] | None = None  # (epoch, samples to skip) after a resume

    def set_epoch(self, epoch: int) -> None:
        if self._skip is not None and self._skip[0] != epoch:
            self._skip = None
        self.epoch = epoch

    def set_distributed(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def skip(self, epoch: int, samples: int) -> None:
        """Make the next iteration of ``epoch`` start after ``samples`` of this rank's samples."""
        self.epoch = epoch
        self._skip = (epoch, samples)

    def _per_rank(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __len__(self) -> int:
        return self._per_rank()

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch``."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        total = self._per_rank() * self.world_size
        if total > self.size:
            order = np.concatenate([order, order[: total - self.size]])
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        start = 0
        if self._skip is not None and self._skip[0] == epoch:
            start = self._skip[1]
            self._skip = None
        yield from (int(i) for i in self.indices(epoch)[start:])


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning saves and restores
    (Lightning calls ``state_dict``/``load_state_dict`` on stateful loaders)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = False, num_workers: int = 0,
                 collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.epoch_sampler = EpochSampler(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=self.epoch_sampler,
                         drop_last=drop_last, num_workers=num_workers, collate_fn=collate_fn,
                         persistent_workers=False)
        self.position: tuple[int, int] = (0, 0)  # (epoch, batches done), set before each save

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.position
        return {"epoch": epoch, "batches_done": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches_done"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.epoch_sampler.skip(epoch, batches * self.batch_size)  # type: ignore[operator]


# -- checkpoints -----------------------------------------------------------------------------------
def _checkpoint_io():  # -> CheckpointIO (imported lazily with lightning)
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    class SafetensorsCheckpointIO(CheckpointIO):
        """Lightning checkpoints as safetensors + JSON (:mod:`retinassl.tree_io`); no pickle."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                            storage_options: Any = None) -> None:
            save_tree(checkpoint, Path(path))

        def load_checkpoint(self, path: Any, map_location: Any = None,
                            weights_only: bool | None = None) -> dict[str, Any]:
            return load_tree(Path(path))

        def remove_checkpoint(self, path: Any) -> None:
            path = Path(path)
            path.unlink(missing_ok=True)
            path.with_suffix(".safetensors").unlink(missing_ok=True)

    return SafetensorsCheckpointIO()


_STEP_FILE = re.compile(r"^step-(\d+)\.json$")


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete resumable checkpoint in ``directory`` (its JSON is written last)."""
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return max(found)[1] if found else None


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


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def step_seed(seed: int, batch_number: int, rank: int) -> int:
    """The seed of one training batch on one rank."""
    return int(np.random.SeedSequence([seed, batch_number, rank]).generate_state(1)[0])


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    method: Method
    batches: int
    seconds: float
    best: dict[str, float]
    history: Path | None


# -- the Lightning module --------------------------------------------------------------------------
def _lightning_module(method: Method, config: EngineConfig, seed: int, loader: ResumableLoader,
                      channels_last: bool, checkpoint_dir: Path):
    import lightning.pytorch as pl

    class LitMethod(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.method = method
            self.automatic_optimization = False
            self.batches_done = 0
            self.best: dict[str, float] = {}
            # the weights of the best validation epoch, kept in memory and in every step
            # checkpoint, so that a resumed run ends with the best weights of its own history
            self.best_state: dict[str, torch.Tensor] | None = None
            # the epoch a resumed run had already finished in (it trains nothing more)
            self.finished_in_epoch: int | None = None
            self._val_outputs: list[dict[str, torch.Tensor]] = []

        # setup ------------------------------------------------------------------------------
        def setup(self, stage: str) -> None:
            loader.epoch_sampler.set_distributed(self.trainer.global_rank, self.trainer.world_size)
            # total batches of the run on this rank (known only once the world size is)
            self.total_batches = max(1, len(loader)) * config.max_epochs
            if config.max_steps > 0:
                self.total_batches = min(self.total_batches, config.max_steps)
            if channels_last:
                self.method.to(memory_format=torch.channels_last)

        def configure_optimizers(self):
            self._groups = list(self.method.configure_optimizers().items())
            return [opt for _, opt in self._groups]

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            if not channels_last:
                return batch
            return _map_tensors(batch, lambda t: t.contiguous(memory_format=torch.channels_last)
                                if t.ndim == 4 and t.is_floating_point() else t)

        # training ---------------------------------------------------------------------------
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
            if 0 < config.max_steps <= self.batches_done:  # resumed from the run's last step
                if self.finished_in_epoch is None:
                    self.finished_in_epoch = self.current_epoch
                self.trainer.should_stop = True
                return -1  # (Lightning: skip the rest of the epoch)
            return None

        def training_step(self, batch: Any, batch_idx: int) -> None:
            number = self.batches_done
            seed_value = step_seed(seed, number, self.trainer.global_rank)
            torch.manual_seed(seed_value)
            generator = torch.Generator().manual_seed(seed_value)
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            factor = self.method.lr_factor(number, self.total_batches)
            for (group, _), opt in zip(self._groups, optimizers):
                for pg in opt.optimizer.param_groups:
                    pg.setdefault("initial_lr", pg["lr"])
                    pg["lr"] = pg["initial_lr"] * factor
                loss, metrics = self.method.loss(batch, group, generator)
                self._check_finite(loss, group, number)
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                opt.step()
                self.log(f"train/{group}_loss", loss.detach().float(), prog_bar=True,
                         on_step=True, on_epoch=False, sync_dist=False)
                for key, value in metrics.items():
                    self.log(f"train/{key}", float(value), on_step=True, on_epoch=False)
            self.method.after_step()
            self._check_divergence(number)
            self.batches_done += 1
            loader.position = (self.current_epoch, batch_idx + 1)
            if 0 < config.max_steps <= self.batches_done:
                self.trainer.should_stop = True

        def _check_finite(self, loss: torch.Tensor, group: str, number: int) -> None:
            bad = not bool(torch.isfinite(loss.detach()).all())
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
            if bad:
                path = self._save_last_good()
                raise TrainingDiverged(
                    f"the {group} loss became {float(loss.detach().float())} at batch {number}; "
                    f"training stopped. The weights before this batch are in {path}; the last "
                    f"resumable checkpoint is in {checkpoint_dir}. Lower the learning rate or use "
                    f"precision 32.")

        def _check_divergence(self, number: int) -> None:
            """Stop when the method reports a divergence it detects itself (e.g. a collapsed GAN
            generator; :meth:`Method.divergence`), after saving the current weights."""
            problem = self.method.divergence()
            if self.trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
                path = self._save_last_good()
                raise TrainingDiverged(
                    f"{problem or 'another process reported a divergence'} (batch {number}); "
                    f"training stopped. The weights after this batch are in {path}; the last "
                    f"resumable checkpoint is in {checkpoint_dir}.")

        def _save_last_good(self) -> Path:
            path = checkpoint_dir / "last-good-weights.safetensors"
            if self.trainer.is_global_zero:
                _save_weights(self.method, path)
            return path

        # validation -------------------------------------------------------------------------
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            out = self.method.validation_outputs(batch)
            self._val_outputs.append({k: v.detach().float().cpu() for k, v in out.items()})

        def on_validation_epoch_end(self) -> None:
            if not self._val_outputs:
                return
            keys = self._val_outputs[0].keys()
            local = {k: torch.cat([o[k] for o in self._val_outputs]) for k in keys}
            self._val_outputs = []
            if self.trainer.world_size > 1:
                local = {k: self.all_gather(v).flatten(0, 1) for k, v in local.items()}
            metrics = self.method.validation_metrics(local)
            for key, value in metrics.items():
                self.log(f"val/{key}", float(value), sync_dist=False, rank_zero_only=True)
            monitor = self.method.monitor
            if monitor and monitor[0] in metrics and not self.trainer.sanity_checking:
                value = float(metrics[monitor[0]])
                previous = self.best.get(monitor[0])
                better = not math.isnan(value) and (
                    previous is None or math.isnan(previous)
                    or (value > previous if monitor[1] == "max" else value < previous))
                if better:
                    epoch = self.current_epoch if self.finished_in_epoch is None else self.finished_in_epoch
                    self.best = {**metrics, "epoch": float(epoch)}
                    state = {k: v.detach().cpu().clone() for k, v in self.method.state_dict().items()}
                    if self.trainer.world_size > 1:  # buffers differ by rank: keep rank 0's
                        state = self.trainer.strategy.broadcast(state, src=0)
                    self.best_state = state
                elif config.patience and self.best and \
                        self.current_epoch - self.best["epoch"] >= config.patience * config.val_every_n_epochs:
                    self.trainer.should_stop = True  # early stopping (the best weights are kept)

        # checkpoint state -------------------------------------------------------------------
        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["retinassl"] = {"batches_done": self.batches_done, "best": dict(self.best)}
            if self.best_state is not None:
                checkpoint["retinassl"]["best_weights"] = self.best_state

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            state = checkpoint.get("retinassl", {})
            self.batches_done = int(state.get("batches_done", 0))
            self.best = dict(state.get("best", {}))
            self.best_state = state.get("best_weights")

        def on_train_end(self) -> None:
            # DDP broadcasts buffers (BatchNorm running statistics) from rank 0 at the start of each
            # forward, so after the last one every rank holds its own: end with rank 0's everywhere
            if self.trainer.world_size > 1:
                buffers = {k: v.detach().cpu() for k, v in self.method.named_buffers()}
                buffers = self.trainer.strategy.broadcast(buffers, src=0)
                with torch.no_grad():
                    for key, value in self.method.named_buffers():
                        value.copy_(buffers[key])

    return LitMethod()


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _save_weights(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    from .atomic import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def _step_checkpoint_callback(every: int, directory: Path):
    import lightning.pytorch as pl

    class StepCheckpoint(pl.Callback):
        """Save ``step-<n>.json`` every ``every`` batches and at each epoch end; keep the newest
        (never when ``every`` is negative).

        Whether step n was saved already is remembered in memory, not looked up on disk: under
        DDP ``save_checkpoint`` is collective, and rank 0's file may or may not be visible to the
        other ranks yet, so a file check would let ranks disagree and deadlock."""

        saved: int | None = None

        def _save(self, trainer: pl.Trainer, module: Any) -> None:
            if every < 0 or self.saved == module.batches_done:
                return
            self.saved = module.batches_done
            path = directory / f"step-{module.batches_done:08d}.json"
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                for p in directory.glob("step-*.json"):
                    if p != path:
                        p.unlink(missing_ok=True)
                        p.with_suffix(".safetensors").unlink(missing_ok=True)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            # the last batch of an epoch is saved at the epoch's end, after its validation: a
            # checkpoint taken before would lack that validation's best weights. The last step of
            # a run stopped mid-epoch (max_steps) is saved here, before its validation, so that a
            # longer max_steps continues the epoch; a resume after it validates again (fit)
            ends_epoch = batch_idx + 1 >= trainer.num_training_batches and not trainer.should_stop
            if every > 0 and module.batches_done % every == 0 and not ends_epoch:
                self._save(trainer, module)

        def on_train_epoch_end(self, trainer, module) -> None:
            self._save(trainer, module)

    return StepCheckpoint()


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
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
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
    precision = "32-true" if config.deterministic else resolve_precision(config.precision, config.accelerator)
    channels_last = config.channels_last is True or (config.channels_last == "auto" and _is_convolutional(method))
    checkpoint_dir = run.checkpoints
    batches_per_epoch = max(1, len(loader))
    module = _lightning_module(method, config, seed, loader, channels_last, checkpoint_dir)
    ckpt_path = None
    if resume:
        ckpt_path = latest_checkpoint(checkpoint_dir)
        if ckpt_path is None:
            log.warning("no checkpoint in %s: starting from the beginning", checkpoint_dir)
    loggers = [CSVLogger(run.logs, name="", version="csv"), TensorBoardLogger(run.logs, name="",
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
        callbacks=[_step_checkpoint_callback(config.checkpoint_every_n_steps, checkpoint_dir), *(callbacks or [])],
        enable_checkpointing=False, plugins=[_checkpoint_io()], use_distributed_sampler=False,
        log_every_n_steps=config.log_every_n_steps, check_val_every_n_epoch=config.val_every_n_epochs,
        num_sanity_val_steps=0, deterministic=config.deterministic or None,
        enable_progress_bar=_progress_bar(), enable_model_summary=False, default_root_dir=run.path)
    start = time.perf_counter()
    log.info("training %s: %d batches/epoch (one process) x %d epochs, precision %s, channels_last %s",
             method.name or type(method).__name__, batches_per_epoch, config.max_epochs, precision,
             channels_last)
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
    seconds = time.perf_counter() - start
    if module.best and method.monitor and module.best_state is None:
        _legacy_best_weights(module, checkpoint_dir)
    if module.best and method.monitor and module.best_state is not None:
        # (after fit, not in on_train_end: Lightning skips that hook when a resumed run was done)
        from .checkpoint import load_state_strict

        load_state_strict(method, module.best_state, "the best validation epoch's weights")
    method.to(memory_format=torch.contiguous_format)
    history = run.logs / "csv" / "metrics.csv"
    return FitResult(method, module.batches_done, seconds, module.best,
                     history if history.is_file() else None)


def _legacy_best_weights(module: Any, checkpoint_dir: Path) -> None:
    """A run resumed from a checkpoint of an older version (best weights in a side file, not in
    the checkpoint): take them from the file, or, without it, forget the best epoch."""
    legacy = checkpoint_dir / "best-weights.safetensors"
    if legacy.is_file():
        from .checkpoint import read_safetensors

        log.warning("%s: the checkpoint predates stored best weights; using %s", checkpoint_dir, legacy.name)
        module.best_state = read_safetensors(legacy)
    else:
        log.warning("%s: the best validation weights are unknown (a checkpoint of an older version "
                    "without %s); the run ends with its last weights", checkpoint_dir, legacy.name)
        module.best = {}


def _is_convolutional(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def _progress_bar() -> bool:
    from .progress import progress_enabled

    return progress_enabled()

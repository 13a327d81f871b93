"""The Lightning module that trains any :class:`~retinassl.methods.base.Method`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from retinassl.config import EngineConfig
from retinassl.engine.checkpoints import save_weights
from retinassl.engine.loader import ResumableLoader
from retinassl.errors import TrainingDiverged
from retinassl.methods.base import Method

log = logging.getLogger(__name__)


def step_seed(seed: int, batch_number: int, rank: int) -> int:
    """The seed of one training batch on one rank."""
    return int(np.random.SeedSequence([seed, batch_number, rank]).generate_state(1)[0])


class LitMethod(pl.LightningModule):
    """A :class:`~retinassl.methods.base.Method` as Lightning trains it: manual optimisation (one
    optimizer per group, stepped in order), per-batch seeds from (run seed, batch number, rank), the
    NaN and divergence guards, validation with best-weights tracking and early stopping, and the
    state a resumed run needs inside every checkpoint."""

    def __init__(self, method: Method, config: EngineConfig, seed: int, loader: ResumableLoader,
                 channels_last: bool, checkpoint_dir: Path) -> None:
        super().__init__()
        self.method = method
        self.engine_config = config
        self.run_seed = seed
        self.loader = loader
        self.use_channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.automatic_optimization = False
        self.batches_done = 0
        self.best: dict[str, float] = {}
        # the weights of the best validation epoch, kept in memory and in every step
        # checkpoint, so that a resumed run ends with the best weights of its own history
        self.best_state: dict[str, torch.Tensor] | None = None
        # the epoch a resumed run had already finished in (it trains nothing more)
        self.finished_in_epoch: int | None = None
        # training seconds of the earlier parts of a resumed run, up to the checkpoint it resumed
        # from (stored in every checkpoint, so train_seconds counts every part)
        self.earlier_seconds = 0.0
        self.part_started = time.perf_counter()
        self._val_outputs: list[dict[str, torch.Tensor]] = []

    # setup ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.loader.epoch_sampler.set_distributed(self.trainer.global_rank, self.trainer.world_size)
        # total batches of the run on this rank (known only once the world size is)
        self.total_batches = max(1, len(self.loader)) * self.engine_config.max_epochs
        if self.engine_config.max_steps > 0:
            if self.total_batches < self.engine_config.max_steps and self.trainer.global_rank == 0:
                # the epochs end the run (and its learning-rate schedule) before the steps asked for
                log.warning("max_epochs=%d x %d batches per epoch ends this run at step %d, before max_steps=%d; "
                            "to train for max_steps, raise max_epochs to at least %d",
                            self.engine_config.max_epochs, max(1, len(self.loader)), self.total_batches,
                            self.engine_config.max_steps,
                            -(-self.engine_config.max_steps // max(1, len(self.loader))))
            self.total_batches = min(self.total_batches, self.engine_config.max_steps)
        if self.use_channels_last:
            self.method.to(memory_format=torch.channels_last)

    def configure_optimizers(self):
        self._groups = list(self.method.configure_optimizers().items())
        return [opt for _, opt in self._groups]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not self.use_channels_last:
            return batch
        return _map_tensors(batch, lambda t: t.contiguous(memory_format=torch.channels_last)
                            if t.ndim == 4 and t.is_floating_point() else t)

    # training ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if 0 < self.engine_config.max_steps <= self.batches_done:  # resumed from the run's last step
            if self.finished_in_epoch is None:
                self.finished_in_epoch = self.current_epoch
            self.trainer.should_stop = True
            return -1  # (Lightning: skip the rest of the epoch)
        # Lightning never calls the method's train(): it sets each module's flag itself (and restores
        # the flags after validation), so a method's own training mode (a frozen encoder in eval mode,
        # frozen batch norm) is applied here, before every step
        self.method.train()
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        number = self.batches_done
        seed_value = step_seed(self.run_seed, number, self.trainer.global_rank)
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
        self.loader.position = (self.current_epoch, batch_idx + 1)
        if 0 < self.engine_config.max_steps <= self.batches_done:
            self.trainer.should_stop = True

    def _check_finite(self, loss: torch.Tensor, group: str, number: int) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            path = self._save_last_good()
            raise TrainingDiverged(
                f"the {group} loss became {float(loss.detach().float())} at batch {number}; "
                f"training stopped. The weights before this batch are in {path}; the last "
                f"resumable checkpoint is in {self.checkpoint_dir}. Lower the learning rate or use "
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
                f"resumable checkpoint is in {self.checkpoint_dir}.")

    def _save_last_good(self) -> Path:
        path = self.checkpoint_dir / "last-good-weights.safetensors"
        if self.trainer.is_global_zero:
            save_weights(self.method, path)
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
            elif self.engine_config.patience and self.best and \
                    self.current_epoch - self.best["epoch"] >= self.engine_config.patience * self.engine_config.val_every_n_epochs:
                self.trainer.should_stop = True  # early stopping (the best weights are kept)

    # checkpoint state -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["retinassl"] = {"batches_done": self.batches_done, "best": dict(self.best),
                                   "seconds": self.earlier_seconds + time.perf_counter() - self.part_started}
        if self.best_state is not None:
            checkpoint["retinassl"]["best_weights"] = self.best_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("retinassl", {})
        self.batches_done = int(state.get("batches_done", 0))
        self.earlier_seconds = float(state.get("seconds", 0.0))
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


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj

"""Resumable training checkpoints: Lightning's checkpoint stored as safetensors + JSON (no pickle),
saved every N steps and at each epoch's end, the newest kept; the last good weights of a diverged run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from retinassl.io.saved_model import module_state, write_safetensors
from retinassl.io.tree import load_tree, save_tree


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning checkpoints as safetensors + JSON (:mod:`retinassl.io.tree`); no pickle."""

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


_STEP_FILE = re.compile(r"^step-(\d+)\.json$")


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete resumable checkpoint in ``directory`` (its JSON is written last)."""
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return max(found)[1] if found else None


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """A module's weights as one safetensors file (the last good weights of a diverged run)."""
    write_safetensors(path, module_state(module))


class StepCheckpoint(pl.Callback):
    """Save ``step-<n>.json`` every ``every`` batches and at each epoch end; keep the newest
    (never when ``every`` is negative).

    Whether step n was saved already is remembered in memory, not looked up on disk: under
    DDP ``save_checkpoint`` is collective, and rank 0's file may or may not be visible to the
    other ranks yet, so a file check would let ranks disagree and deadlock."""

    def __init__(self, every: int, directory: Path) -> None:
        self.every = every
        self.directory = directory
        self.saved: int | None = None

    def _save(self, trainer: pl.Trainer, module: Any) -> None:
        if self.every < 0 or self.saved == module.batches_done:
            return
        self.saved = module.batches_done
        path = self.directory / f"step-{module.batches_done:08d}.json"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            for p in self.directory.glob("step-*.json"):
                if p != path:
                    p.unlink(missing_ok=True)
                    p.with_suffix(".safetensors").unlink(missing_ok=True)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # the last batch of an epoch is saved at the epoch's end, after its validation: a
        # checkpoint taken before would lack that validation's best weights. The last step of
        # a run stopped mid-epoch (max_steps) is saved here, before its validation, so that a
        # longer max_steps continues the epoch; a resume after it validates again (fit)
        ends_epoch = batch_idx + 1 >= trainer.num_training_batches and not trainer.should_stop
        if self.every > 0 and module.batches_done % self.every == 0 and not ends_epoch:
            self._save(trainer, module)

    def on_train_epoch_end(self, trainer, module) -> None:
        self._save(trainer, module)

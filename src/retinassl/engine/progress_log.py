"""Progress lines in the log when no terminal shows a progress bar (nohup, SLURM, CI): step, epoch,
losses, the latest validation metrics, elapsed and estimated remaining time, once a minute and at
the end of every epoch (rank 0 only)."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("retinassl.engine.fit")


def clock(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLog(pl.Callback):
    """Log a progress line every ``every_seconds`` and at each epoch's end."""

    def __init__(self, every_seconds: float = 60.0) -> None:
        self.every_seconds = every_seconds
        self.started: float | None = None
        self.first_batch = 0
        self.last = 0.0

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        self.started = self.last = time.perf_counter()
        self.first_batch = int(getattr(module, "batches_done", 0))
        if self.first_batch:
            log.info("resumed at step %d (epoch %d)", self.first_batch, trainer.current_epoch)

    def line(self, trainer: pl.Trainer, module: Any) -> str:
        done = int(getattr(module, "batches_done", 0))
        total = int(getattr(module, "total_batches", 0)) or None
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        metrics = trainer.callback_metrics
        losses = ", ".join(f"{k.removeprefix('train/')} {float(v):.4g}" for k, v in metrics.items()
                           if k.startswith("train/") and k.endswith("loss"))
        val = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items() if k.startswith("val/"))
        rate = (done - self.first_batch) / elapsed if elapsed > 0 else 0.0
        eta = f", about {clock((total - done) / rate)} left" if total and rate > 0 and done < total else ""
        return (f"step {done}{f'/{total}' if total else ''} (epoch {trainer.current_epoch + 1}): "
                f"{losses or 'no loss yet'}{' | ' + val if val else ''} | {clock(elapsed)} elapsed{eta}")

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if trainer.is_global_zero and now - self.last >= self.every_seconds:
            self.last = now
            log.info("%s", self.line(trainer, module))

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if trainer.is_global_zero:
            self.last = time.perf_counter()
            log.info("%s", self.line(trainer, module))

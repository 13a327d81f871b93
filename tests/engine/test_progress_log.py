"""Progress lines when no terminal shows a bar: one per epoch at least, with step, loss and time."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from retinassl.config import EngineConfig
from retinassl.engine.fit import fit
from retinassl.engine.progress_log import clock
from retinassl.io.rundir import RunDir
from retinassl.methods.base import build_method
from retinassl.models import build_encoder


class Tiny(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 32, 32, generator=g), "label": torch.tensor(float(i % 2))}


def test_clock() -> None:
    assert (clock(42), clock(185), clock(3720)) == ("42s", "3m05s", "1h02m")


def test_each_epoch_logs_a_progress_line(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_PROGRESS", "0")              # as under nohup or SLURM
    torch.manual_seed(0)
    method = build_method("supervised", {}, build_encoder("convnet", width=4))
    with caplog.at_level(logging.INFO, logger="retinassl"):
        fit(method, Tiny(), config=EngineConfig(max_epochs=2, batch_size=4, checkpoint_every_n_steps=-1,
                                                precision="32"), run=RunDir(tmp_path), seed=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 2
    assert lines[0].startswith("step 2/4 (epoch 1): main_loss ") and "elapsed" in lines[0]
    assert lines[1].startswith("step 4/4 (epoch 2)")


def test_epochs_that_end_a_run_before_its_steps_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """max_steps=10 with 2 epochs of 2 batches stops at step 4: the user is told, with the epochs that would
    give the steps; enough epochs say nothing."""
    torch.manual_seed(0)
    method = build_method("supervised", {}, build_encoder("convnet", width=4))
    config = EngineConfig(max_epochs=2, max_steps=10, batch_size=4, checkpoint_every_n_steps=-1, precision="32")
    with caplog.at_level(logging.WARNING, logger="retinassl"):
        result = fit(method, Tiny(), config=config, run=RunDir(tmp_path / "a"), seed=0)
    assert result.batches == 4
    (warning,) = [r.getMessage() for r in caplog.records if "max_epochs" in r.getMessage()]
    assert "ends this run at step 4, before max_steps=10" in warning and "at least 5" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retinassl"):
        fit(method, Tiny(), config=config.model_copy(update={"max_epochs": 5}), run=RunDir(tmp_path / "b"), seed=0)
    assert not [r for r in caplog.records if "max_epochs" in r.getMessage()]

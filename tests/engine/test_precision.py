"""The precision a training computes in: chosen once per run, recorded in ``run.json``, and kept when
an ``auto`` run resumes on another machine (a CPU with bf16 and one without train different models
from one seed, so a run's parts must not switch arithmetic)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from retinassl.config import EngineConfig
from retinassl.engine import fit as engine_fit
from retinassl.io.rundir import RunDir


@pytest.fixture
def no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_fit, "cpu_supports_bf16", lambda: False)


def test_auto_follows_the_machine_until_a_run_has_started(no_bf16, monkeypatch: pytest.MonkeyPatch) -> None:
    auto = EngineConfig(precision="auto")
    assert engine_fit.run_precision(auto, None) == "32-true"
    monkeypatch.setattr(engine_fit, "cpu_supports_bf16", lambda: True)
    assert engine_fit.run_precision(auto, None) == "bf16-mixed"
    assert engine_fit.run_precision(auto, "32-true") == "32-true"   # started without bf16: stays float32


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(no_bf16, caplog, monkeypatch) -> None:
    with caplog.at_level(logging.INFO, logger="retinassl.engine.fit"):
        assert engine_fit.run_precision(EngineConfig(precision="auto"), "bf16-mixed") == "bf16-mixed"
    assert "emulates it" in caplog.text                      # no bf16 on this CPU: kept, said to be slower
    caplog.clear()
    monkeypatch.setattr(engine_fit, "cpu_supports_bf16", lambda: True)
    with caplog.at_level(logging.INFO, logger="retinassl.engine.fit"):
        assert engine_fit.run_precision(EngineConfig(precision="auto"), "32-true") == "32-true"
    assert "the precision this run started with" in caplog.text


def test_a_precision_this_device_cannot_run_is_not_kept(no_bf16, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="retinassl.engine.fit"):   # a GPU's fp16 run resumed on a CPU
        assert engine_fit.run_precision(EngineConfig(precision="auto", accelerator="cpu"), "16-mixed") == "32-true"
    assert "cannot run" in caplog.text


def test_an_explicit_precision_or_deterministic_wins_with_a_warning(no_bf16, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="retinassl.engine.fit"):
        assert engine_fit.run_precision(EngineConfig(precision="32"), "bf16-mixed") == "32-true"
    assert "compute differently" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retinassl.engine.fit"):
        assert engine_fit.run_precision(EngineConfig(precision="auto", deterministic=True), "bf16-mixed") == "32-true"
    assert "deterministic" in caplog.text and "compute differently" in caplog.text


class Toy(torch.utils.data.Dataset):
    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = (self.x[:, 0].mean((1, 2)) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "index": i}


def _method():
    import retinassl.methods  # noqa: F401  (registers "supervised")
    from retinassl.methods.base import build_method
    from retinassl.models import build_encoder

    torch.manual_seed(0)
    return build_method("supervised", {"lr": 1e-3, "augment": "none"}, build_encoder("convnet", width=4))


def test_fit_records_its_precision_and_a_resumed_run_on_a_machine_without_bf16_keeps_it(
        tmp_path: Path, no_bf16) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    config = EngineConfig(max_epochs=1, batch_size=8, precision="auto", num_threads=1, checkpoint_every_n_steps=1)
    result = engine_fit.fit(_method(), Toy(), config=config, run=run, seed=1)
    assert result.precision == "32-true" and run.status()["precision"] == "32-true"

    # a run started on a bf16 machine (its run.json says so), resumed here: it goes on in bf16
    run.update_status(precision="bf16-mixed")
    resumed = engine_fit.fit(_method(), Toy(), config=config.model_copy(update={"max_epochs": 2}), run=run, seed=1,
                             resume=True)
    assert resumed.precision == "bf16-mixed" and json.loads((run.path / "run.json").read_text())["precision"] == "bf16-mixed"

    # asked to resume but no checkpoint is left: it starts from the beginning, in this machine's precision
    shutil.rmtree(run.checkpoints)
    again = engine_fit.fit(_method(), Toy(), config=config, run=run, seed=1, resume=True)
    assert again.precision == "32-true" and run.status()["precision"] == "32-true"

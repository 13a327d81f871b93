"""MAE reconstructions: a finished ``pretrain mae`` run shows them in its report, and ``retinassl explain
reconstructions RUN`` draws them later from the run's newest training checkpoint (the decoder is kept
only there), with the very weights the run saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from retinassl.cli import app
from retinassl.errors import CheckpointError, ConfigError
from retinassl.figures.reconstructions import sample_rows
from retinassl.jobs.reconstructions import method_from_run, reconstructions_of_run
from retinassl.models.checkpoint import load_encoder

TINY_MAE = ["data.options.n_images=6", "data.options.size=64", "preprocess.size=32",
            "model.kwargs.img_size=32", "model.kwargs.patch_size=8", "engine.batch_size=3",
            "engine.max_steps=2", "engine.max_epochs=1", "engine.checkpoint_every_n_steps=1",
            "engine.log_every_n_steps=1", "engine.precision='32'", "method.decoder_dim=16",
            "method.decoder_depth=1", "method.decoder_heads=2"]


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mae")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETINASSL_CACHE", str(root / "cache"))
    try:
        result = CliRunner().invoke(app, ["pretrain", "mae", *TINY_MAE, f"data.options.out_dir={root / 'data'}",
                                          "--runs-dir", str(root / "runs")])
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    return next((root / "runs").iterdir())


def test_a_finished_mae_run_reports_its_reconstructions(mae_run: Path) -> None:
    figure = mae_run / "report" / "figures" / "reconstructions-mae.png"
    assert figure.is_file() and figure.stat().st_size > 1000
    assert "Masked-autoencoder reconstructions" in (mae_run / "report" / "index.html").read_text()


def test_the_checkpoint_method_holds_the_saved_encoder(mae_run: Path) -> None:
    method, config, step = method_from_run(mae_run)
    assert step == 2 and config.method_name == "mae"
    saved, _ = load_encoder(mae_run / "encoder")
    ours = method.encoder.state_dict()
    for key, value in saved.state_dict().items():
        assert torch.equal(ours[key], value), key


def test_reconstructions_of_run_are_seeded(mae_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    a = reconstructions_of_run(mae_run, tmp_path / "a.png", images=3, seed=1).read_bytes()
    b = reconstructions_of_run(mae_run, tmp_path / "b.png", images=3, seed=1).read_bytes()
    c = reconstructions_of_run(mae_run, tmp_path / "c.png", images=3, seed=2).read_bytes()
    assert a == b and a != c


def test_rows_are_distinct_and_seeded() -> None:
    rows = sample_rows(10, 4, seed=3)
    assert len(set(rows.tolist())) == 4 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, sample_rows(10, 4, seed=3))
    assert len(sample_rows(3, 6, seed=0)) == 3  # never more than the pool


def test_cli_and_its_errors(mae_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    result = runner.invoke(app, ["explain", "reconstructions", str(mae_run), "--images", "2",
                                 "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    assert len(list((run / "report" / "figures").glob("reconstructions-*.png"))) == 1
    with pytest.raises(ConfigError, match="not a pretraining run"):
        method_from_run(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((mae_run / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        method_from_run(tmp_path / "empty")


"""The pretraining pipeline and ``retinassl pretrain``: a run leaves an encoder that loads back, its
training curves and a report; it resumes; pools combine sources and ignore labels; supervised
pretraining can start from external (torchvision-named) weights."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from retinassl.models.checkpoint import load_encoder
from retinassl.cli import app
from retinassl.config import load_config
from retinassl.errors import ConfigError
from retinassl.models import build_encoder
from retinassl.jobs.pretrain import PretrainConfig, load_pool, run_pretrain
from retinassl.io.rundir import RunDir

TINY = ["data.options.n_images=8", "data.options.size=96", "preprocess.size=64",
        "engine.batch_size=4", "engine.log_every_n_steps=1",
        "engine.precision='32'"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def test_cli_pretrain_writes_encoder_curves_report_and_resumes(tmp_path: Path, synthetic_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    args = ["pretrain", "simclr", *TINY, f"data.options.out_dir={synthetic_dir / 'a'}",
            "engine.max_steps=3", "method.projection_hidden=16", "--runs-dir", str(tmp_path / "runs")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    encoder, meta = load_encoder(run / "encoder")
    assert meta["method"] == "simclr" and meta["arch"] == "resnet18" and meta["batches"] == 3
    assert meta["preprocess"]["size"] == 64 and meta["data_fingerprint"] and meta["init"] == "scratch"
    history = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    assert history["train/main_loss"].notna().sum() == 3
    report = (run / "report" / "index.html").read_text()
    assert "Training curves" in report and (run / "report" / "figures" / "training-curves.png").is_file()
    pool = pd.read_csv(run / "manifest.csv")
    assert set(pool["split"]) <= {"train", "val"}  # the preset leaves the test split out
    # resume the same run for two more steps
    result = runner.invoke(app, ["pretrain", "simclr", "engine.max_steps=5", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "encoder" / "model.json").read_text())["batches"] == 5
    # a config for another method is refused with a clear message
    result = runner.invoke(app, ["pretrain", "rotation", "pretrain-simclr"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)


def test_pool_combines_sources_and_ignores_labels(tmp_path: Path, synthetic_dir: Path) -> None:
    data = [{"source": "synthetic", "options": {"n_images": 8, "size": 96, "seed": s,
                                                 "out_dir": str(synthetic_dir / f"pool{s}")}}
            for s in (0, 1)]
    config = load_config(PretrainConfig, None, ["splits=[train, val]"]).model_copy(
        update={"data": PretrainConfig.model_validate({"data": data}).data})
    pool = load_pool(config)
    assert len(pool) == 16 and pool.frame["id"].is_unique
    assert pool.frame["id"].str.startswith("synthetic1-").sum() == 8
    pool.frame["abnormal"] = ""  # unlabelled images are fine for a self-supervised method
    cfg = load_config(PretrainConfig, "pretrain-rotation", TINY + [
        "engine.max_steps=2", f"runs_dir={tmp_path}"])
    encoder_dir = run_pretrain(cfg, RunDir.create(tmp_path, "pool"), manifest=pool)
    assert load_encoder(encoder_dir)[1]["pool_size"] == 16


def test_supervised_pretraining_from_external_weights(tmp_path: Path, synthetic_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The two-step "ImageNet + Fundus" path: torchvision-named resnet18 weights (made here; no
    real ImageNet weights are available offline) -> supervised normal/abnormal pretraining."""
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    state = {f"module.{k}": v for k, v in build_encoder("resnet18").state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    weights = tmp_path / "imagenet-resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    cfg = load_config(PretrainConfig, "pretrain-supervised", TINY + [
        f"data.options.out_dir={synthetic_dir / 'a'}", "model.arch=resnet18", "model.kwargs={}",
        f"model.init={weights}", "preprocess.normalize=imagenet", "preprocess.size=32",
        "engine.max_steps=2", f"runs_dir={tmp_path}"])
    encoder_dir = run_pretrain(cfg, RunDir.create(tmp_path, "fundus"))
    encoder, meta = load_encoder(encoder_dir)
    assert meta["init"] == "external" and meta["init_source"] == str(weights)
    assert meta["method"] == "supervised" and meta["arch"] == "resnet18"
    assert not torch.equal(encoder.conv1.weight, state["module.conv1.weight"])  # it trained

"""A transfer experiment on a published ViT named by ``model.weights`` (a tiny stand-in entry): the
weights file loads into the model's architecture, probe and fine-tuning cells run with its inputs
(0.5 / 0.5 normalisation at its size), mean pooling and layer-wise lr decay, the saved classifier
records the inputs, and its Grad-CAM figure is drawn on the patch-token map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.models import build_encoder
from retinassl.models.vit_weights import KNOWN_WEIGHTS, KnownWeights
from retinassl.sweeps.transfer import run_transfer
from retinassl.sweeps.transfer_config import resolve_config

KWARGS = {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32, "num_register_tokens": 1}


@pytest.mark.slow
def test_transfer_experiment_on_published_vit_weights(tiny_root: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KNOWN_WEIGHTS, "tiny-vit", KnownWeights("vit", KWARGS, (0.5,) * 3, (0.5,) * 3, 32,
                                                                "meanstd", "a test stand-in"))
    torch.manual_seed(0)
    weights = tmp_path / "tiny-vit.safetensors"
    save_file({k: v.contiguous() for k, v in build_encoder("vit", **KWARGS).state_dict().items()}, str(weights))
    data = {
        "kind": "transfer", "name": "vit", "seed": 0,
        "data": {"source": "manifest", "manifest": str(tiny_root / "data" / "manifest.csv"),
                 "cache_dir": str(tmp_path / "cache")},
        "preprocess": {"size": 48},
        "model": {"arch": "resnet18", "weights": "tiny-vit"},
        "inits": [{"name": "scratch"}, {"name": "published", "init": str(weights)}],
        "reference": "scratch",
        "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2}],
        "fractions": [1.0], "seeds": [0],
        "probe": {"c_grid": [1.0], "pooling": "mean"},
        "finetune": {"epochs": 1, "min_steps": 2, "max_steps": 2, "patience": 0, "layer_decay": 0.65,
                     "warmup_steps": 1},
        "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "precision": "32"},
        "explain": {"tsne": False, "gradcam": 1},
    }
    config = resolve_config(data, None)
    assert config.model.arch == "vit" and config.preprocess.size == 32
    assert config.preprocess.normalize == "meanstd"
    run = RunDir.create(tmp_path / "runs", "vit")
    run_transfer(config, run)
    results = read_results(run.results_file)
    cells = results[results["metric"] == "n_test"]
    assert {(i, p) for i, p in zip(cells["init"], cells["protocol"])} == {
        (i, p) for i in ("scratch", "published") for p in ("probe", "finetune")}
    meta = json.loads((run.path / "models" / "referable-published" / "model.json").read_text())
    assert meta["arch"] == "vit" and meta["weights"]["weights"] == "tiny-vit"
    assert meta["preprocess"]["normalize"] == "meanstd" and meta["preprocess"]["normalize_std"] == [0.5] * 3
    assert meta["supervised"]["layer_decay"] == 0.65 and meta["supervised"]["warmup_steps"] == 1
    assert meta["precision"] == "32-true"  # the engine's precision: "32" (bf16 and float32 train different models)
    figure = run.report_dir / "figures" / "gradcam-published.png"
    assert figure.is_file() and figure.stat().st_size > 1000

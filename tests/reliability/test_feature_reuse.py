"""Evaluation sweeps extract features once and reuse them: a linear-probe sweep over 2 tasks x 3 label
fractions x 3 seeds runs the encoder over each image exactly once (counted at the encoder's forward),
and a second sweep on the same data and weights runs it not at all (the feature cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinassl.data.synthetic import generate_dataset


def _config(root: Path) -> dict:
    return {
        "kind": "transfer", "name": "reuse", "seed": 0,
        "data": {"source": "manifest", "manifest": str(root / "data" / "manifest.csv"),
                 "cache_dir": str(root / "cache")},
        "preprocess": {"size": 32},
        "model": {"arch": "convnet", "kwargs": {"width": 4}},
        "inits": [{"name": "scratch"}],
        "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2},
                  {"name": "grade", "kind": "multiclass", "label": "dr_grade", "positive_from": 2}],
        "fractions": [0.25, 0.5, 1.0], "seeds": [0, 1, 2], "finetune_seeds": [0],
        "protocols": ["probe"], "probe": {"c_grid": [1.0]},
        "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "precision": "32"},
        "explain": {"tsne": False, "gradcam": 0}}


def test_probe_sweep_embeds_each_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep_module = pytest.importorskip("retinassl.sweeps.transfer")
    from retinassl.data.manifest import Manifest
    from retinassl.io.results import read_results
    from retinassl.io.rundir import RunDir

    generate_dataset(tmp_path / "data", n_images=40, size=64, seed=3)
    n_images = len(Manifest.load(tmp_path / "data" / "manifest.csv"))
    forwarded: list[int] = []
    from retinassl.sweeps import transfer_inits  # where the sweep builds the frozen encoders it embeds with

    real_initial = transfer_inits.seeded_initial_encoder

    def counting_initial(model, seed):
        initial = real_initial(model, seed)
        initial.encoder.register_forward_hook(lambda m, args, out: forwarded.append(int(args[0].shape[0])))
        return initial

    monkeypatch.setattr(transfer_inits, "seeded_initial_encoder", counting_initial)
    config = sweep_module.resolve_config(_config(tmp_path), None)
    run = RunDir.create(tmp_path / "runs", "reuse")
    sweep_module.run_transfer(config, run)
    results = read_results(run.results_file)
    probes = results[(results["protocol"] == "probe") & (results["metric"] == "n_test")]
    assert len(probes) == 2 * 3 * 3                          # every cell was evaluated
    assert sum(forwarded) == n_images                        # each image through the encoder once
    # a second sweep (another run directory, same data and weights): features come from the cache
    forwarded.clear()
    sweep_module.run_transfer(config, RunDir.create(tmp_path / "runs", "reuse-again"))
    assert sum(forwarded) == 0

"""Fine-tuning a ViT with layer-wise lr decay and warm-up through the engine: the optimizer state in
the resumable checkpoint holds each layer's lr (decay powers apart, scaled by the warm-up), and a
resumed run reads it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retinassl.config import EngineConfig, ModelConfig
from retinassl.data.cache import PreparedData
from retinassl.engine.checkpoints import latest_checkpoint
from retinassl.io.tree import load_tree
from retinassl.jobs.finetune import FinetuneConfig, finetune
from retinassl.metrics.tasks import TaskSpec

REFERABLE = TaskSpec(name="referable", label="dr_grade", positive_from=2)


def test_layer_decay_and_warmup_reach_the_optimizer(tiny_prepared: PreparedData, tmp_path: Path) -> None:
    split = tiny_prepared.manifest.frame["split"].to_numpy()
    train, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    model = ModelConfig(arch="vit", kwargs={"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8,
                                            "img_size": 32})
    config = FinetuneConfig(lr=1e-3, layer_decay=0.5, warmup_steps=4, epochs=1, min_steps=2, max_steps=2,
                            patience=0, augment="none", val_fraction=0.2)
    engine = EngineConfig(batch_size=8, checkpoint_every_n_steps=1, precision="32")
    result = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / "w", seed=0)
    assert result.steps == 2 and np.isfinite(result.scores).all()
    state = load_tree(latest_checkpoint(tmp_path / "w" / "checkpoints"))
    groups = state["optimizer_states"][0]["param_groups"]
    by_layer = {}
    for g in groups:
        # peak lr: 1e-3 * 0.5 ** (depth + 1 - layer); the second step (index 1) runs at 2/4 of it
        assert g["initial_lr"] == pytest.approx(1e-3 * 0.5 ** (3 - g["layer_id"]), rel=1e-9)
        assert g["lr"] == pytest.approx(g["initial_lr"] * 2 / 4, rel=1e-9)
        by_layer.setdefault(g["layer_id"], set()).add(g["weight_decay"])
    assert sorted(by_layer) == [0, 1, 2, 3]
    assert by_layer[0] == {0.0, config.weight_decay}              # pos_embed/tokens/bias vs patch conv
    again = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / "w", seed=0,
                     resume=True)
    np.testing.assert_allclose(again.scores, result.scores, atol=1e-6)

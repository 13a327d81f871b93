"""ViT transfer recipes: layer-wise learning-rate decay (every parameter's lr and weight decay as
BEiT/MAE define them, each parameter in exactly one group), the linear warm-up of fine-tuning, and
the pooled embedding a linear probe uses (class token or mean patch token, part of the feature key)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from retinassl.data.preprocess import PreprocessConfig
from retinassl.errors import ConfigError
from retinassl.jobs.finetune import FinetuneConfig
from retinassl.jobs.probe import ProbeConfig
from retinassl.methods.base import build_method
from retinassl.methods.pretext_base import warmup_cosine
from retinassl.models import build_encoder
from retinassl.models.vit_transfer import set_pooling

DEPTH, LR, WD, DECAY = 3, 1e-3, 0.05, 0.5


def tiny_vit(**kw):
    torch.manual_seed(0)
    return build_encoder("vit", embed_dim=16, depth=DEPTH, num_heads=2, patch_size=4, img_size=16, **kw)


def supervised(encoder, **params):
    return build_method("supervised", {"task": "multiclass", "num_classes": 3, "lr": LR, "weight_decay": WD,
                                       **params}, encoder)


def expected_lr(name: str) -> float:
    """BEiT/MAE: lr * decay ** (L - layer_id) with L = depth + 1; embeddings layer 0, block i layer
    i + 1, everything above the blocks (final norm, head) layer L. Written from the rule, not the code."""
    if name.split(".")[1] in ("cls_token", "reg_token", "pos_embed", "patch_embed"):
        return LR * DECAY ** 4
    if name.startswith("encoder.blocks."):
        return LR * DECAY ** (3 - int(name.split(".")[2]))
    return LR


def test_layer_decay_gives_every_parameter_its_lr_and_weight_decay_once() -> None:
    method = supervised(tiny_vit(num_register_tokens=2, layer_scale=1e-5), layer_decay=DECAY)
    opt = method.configure_optimizers()["main"]
    where = {}
    for group in opt.param_groups:
        for p in group["params"]:
            assert id(p) not in where, "a parameter is in two groups"
            where[id(p)] = (group["lr"], group["weight_decay"])
    named = dict(method.named_parameters())
    assert set(where) == {id(p) for p in named.values()}, "a parameter is missing from the groups"
    spot = {"encoder.patch_embed.proj.weight": 1e-3 / 16, "encoder.pos_embed": 1e-3 / 16,
            "encoder.reg_token": 1e-3 / 16, "encoder.blocks.0.attn.qkv.weight": 1e-3 / 8,
            "encoder.blocks.1.mlp.fc1.bias": 1e-3 / 4, "encoder.blocks.2.ls2.gamma": 1e-3 / 2,
            "encoder.norm.weight": 1e-3, "head.fc.weight": 1e-3}
    for name, lr in spot.items():
        assert where[id(named[name])][0] == pytest.approx(lr, rel=1e-12), name
    for name, p in named.items():
        lr, wd = where[id(p)]
        assert lr == pytest.approx(expected_lr(name), rel=1e-12), name
        no_decay = p.ndim == 1 or name in ("encoder.cls_token", "encoder.reg_token", "encoder.pos_embed")
        assert wd == (0.0 if no_decay else WD), name
    # a frozen encoder leaves only the head, at the full lr
    frozen = supervised(tiny_vit(), layer_decay=DECAY, freeze_encoder=True)
    groups = frozen.configure_optimizers()["main"].param_groups
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in frozen.head.parameters()}
    assert all(g["lr"] == LR for g in groups)


def test_layer_decay_is_off_by_default_and_refused_for_convolutional_encoders() -> None:
    method = supervised(build_encoder("convnet", width=4))
    groups = method.configure_optimizers()["main"].param_groups
    assert len(groups) == 1 and groups[0]["lr"] == LR and groups[0]["weight_decay"] == WD
    assert FinetuneConfig().layer_decay is None and FinetuneConfig().warmup_steps is None
    with pytest.raises(ConfigError, match="ViT"):
        supervised(build_encoder("convnet", width=4), layer_decay=0.65).configure_optimizers()


def test_warmup_steps_then_cosine_or_constant() -> None:
    cosine = supervised(tiny_vit(), warmup_steps=4)
    # 4 warm-up steps (s + 1) / 4, then cosine over the remaining 16 of 20 steps
    assert [cosine.lr_factor(s, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine.lr_factor(4, 20) == pytest.approx(1.0)
    assert cosine.lr_factor(12, 20) == pytest.approx(0.5)
    assert cosine.lr_factor(8, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert cosine.lr_factor(20, 20) == pytest.approx(0.0, abs=1e-12)
    constant = supervised(tiny_vit(), warmup_steps=4, schedule="constant")
    assert [constant.lr_factor(s, 20) for s in (0, 1, 3, 4, 19)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert supervised(tiny_vit(), schedule="constant").lr_factor(0, 20) == 1.0
    # the default is unchanged: 5 % of the run (one step of 20)
    assert supervised(tiny_vit()).lr_factor(0, 20) == warmup_cosine(0, 20, 0.05) == 1.0
    assert warmup_cosine(1, 10, warmup_steps=0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))


def test_probe_pooling_switches_a_vit_between_class_and_mean_token() -> None:
    from retinassl.jobs.features import feature_key

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    encoder = tiny_vit(num_register_tokens=1).eval()
    with torch.no_grad():
        tokens = encoder.norm(encoder.tokens(x)[0])  # (B, 1 + 1 + 16, D): class, register, patches
        assert torch.allclose(set_pooling(encoder, "mean")(x), tokens[:, 2:].mean(1), atol=1e-6)
        assert torch.allclose(set_pooling(encoder, "cls")(x), tokens[:, 0], atol=1e-6)
        assert set_pooling(encoder, "encoder").pooling == "cls"
    assert ProbeConfig().pooling == "encoder"

    prepared = SimpleNamespace(config=PreprocessConfig(size=16, normalize="unit"),
                               manifest=SimpleNamespace(frame=pd.DataFrame({"id": []})), entries=[])
    keys = {set_pooling(encoder, p) and feature_key(encoder, prepared) for p in ("cls", "mean")}
    assert len(keys) == 2, "the feature cache must not return class-token features for mean pooling"
    with pytest.raises(ConfigError, match="ViT"):
        set_pooling(build_encoder("convnet", width=4), "mean")
    with pytest.raises(ConfigError, match="class token"):
        set_pooling(tiny_vit(class_token=False, pooling="mean"), "cls")

"""Encoder checkpoints (safetensors + JSON); the pickle-free training-state trees are tests/io/test_tree.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retinassl.models.checkpoint import load_encoder, save_encoder
from retinassl.errors import CheckpointError
from retinassl.models import build_encoder


def test_encoder_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_encoder("resnet18", in_channels=1)
    with torch.no_grad():
        enc.bn1.running_mean.uniform_()
    save_encoder(tmp_path / "enc", enc, arch="resnet18", kwargs={"in_channels": 1},
                 preprocess={"size": 224}, method="rotation", data_fingerprint="abc")
    back, meta = load_encoder(tmp_path / "enc")
    assert meta["arch"] == "resnet18" and meta["preprocess"] == {"size": 224}
    assert meta["method"] == "rotation" and "torch" in meta["versions"]
    x = torch.randn(2, 1, 64, 64)
    enc.eval(), back.eval()
    assert torch.equal(enc(x), back(x))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_mismatched_weights_are_named(tmp_path: Path) -> None:
    enc = build_encoder("convnet", width=8)
    save_encoder(tmp_path / "e", enc, arch="convnet", kwargs={"width": 8})
    meta = json.loads((tmp_path / "e" / "model.json").read_text())
    meta["kwargs"] = {"width": 16}
    (tmp_path / "e" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not fit the model: .* with other shapes"):
        load_encoder(tmp_path / "e")
    with pytest.raises(CheckpointError, match="no model.json"):
        load_encoder(tmp_path)

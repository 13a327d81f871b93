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


def test_weights_identity_names_the_weights_not_the_folder(tmp_path: Path) -> None:
    """A run's records name an encoder by its weights' digest: the same weights anywhere give the same
    name (a run restored elsewhere), other weights another, even written in place with the same size and
    times; a name that is no file stays as given; records of earlier versions (the folder's path) match."""
    import hashlib
    import os
    import shutil

    from retinassl.models.initialize import same_weights, weights_identity

    torch.manual_seed(0)
    save_encoder(tmp_path / "a" / "encoder", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    weights = tmp_path / "a" / "encoder" / "model.safetensors"
    expected = "blake2b:" + hashlib.blake2b(weights.read_bytes(), digest_size=16).hexdigest()
    for name in ("a/encoder", "moved/encoder", "a/encoder/model.json", "a/encoder/model.safetensors"):
        assert weights_identity(str(tmp_path / name)) == expected, name
    assert weights_identity("scratch") == "scratch"
    assert same_weights(str(tmp_path / "moved" / "encoder"), expected) and same_weights(expected, expected)
    # other weights of the same shapes copied over it, size and times kept as they were
    save_encoder(tmp_path / "other", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    stat = weights.stat()
    shutil.copyfile(tmp_path / "other" / "model.safetensors", weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    assert weights_identity(str(tmp_path / "a" / "encoder")) == weights_identity(str(tmp_path / "other")) != expected
    assert not same_weights(str(tmp_path / "a" / "encoder"), expected)
    # an encoder folder of the earlier format (encoder.json + encoder.safetensors) is named by its weights too
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copyfile(tmp_path / "other" / "model.safetensors", legacy / "encoder.safetensors")
    (legacy / "encoder.json").write_text(json.dumps({"format": "retinassl-encoder", "arch": "convnet",
                                                     "kwargs": {"width": 8}}))
    assert weights_identity(str(legacy)) == weights_identity(str(tmp_path / "other"))

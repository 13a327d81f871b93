"""One saved-model format for every kind: round trips, the compatibility reader for directories the
earlier formats wrote (fixtures made by the pre-redesign code), and one writer of safetensors files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from retinassl.config import load_config
from retinassl.errors import CheckpointError
from retinassl.io.saved_model import META, WEIGHTS, read_model, read_model_meta
from retinassl.jobs.finetune import load_classifier, save_classifier
from retinassl.jobs.segment import build_vessel_method, load_segmenter, save_segmenter
from retinassl.jobs.segment_config import SegmentConfig
from retinassl.methods.base import build_method
from retinassl.methods.oct_layers import LayerModel, load_layer_model
from retinassl.metrics.tasks import TaskSpec
from retinassl.models import build_encoder
from retinassl.models.checkpoint import load_encoder, save_encoder
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.models.segmentation import UNet

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_models"
SRC = Path(__file__).resolve().parents[2] / "src" / "retinassl"


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(LEGACY / "reference.safetensors"))


def segmenter_input(model: UNet) -> torch.Tensor:
    x3, x1 = inputs()
    return x3 if model.encoder.in_channels == 3 else x1


@torch.no_grad()
def test_legacy_directories_load_with_the_same_outputs(reference: dict[str, torch.Tensor]) -> None:
    """Outputs agree to 1e-6 (not bit for bit: the fixtures were computed in another process, whose
    thread count can change the order of float sums)."""
    x3, x1 = inputs()
    encoder, meta = load_encoder(LEGACY / "encoder")
    assert meta["kind"] == "encoder" and meta["converted_from"] == "retinassl-encoder"
    assert torch.allclose(encoder.eval()(x3), reference["encoder"], atol=1e-6)
    method, task, meta = load_classifier(LEGACY / "classifier")
    assert meta["kind"] == "classifier" and task.num_classes == 3
    assert torch.allclose(method.head(method.encoder(x3)), reference["classifier"], atol=1e-6)
    patch, meta = PatchClassifier.load(LEGACY / "patch_classifier")
    assert meta["kind"] == "patch-classifier" and patch.patch_size == 32
    assert patch.image_score == "sum"                               # saved before the rule existed
    assert torch.allclose(patch(x3), reference["patch_classifier"], atol=1e-6)
    seg = load_segmenter(LEGACY / "segmenter")
    assert torch.allclose(seg.model(segmenter_input(seg.model)), reference["segmenter"], atol=1e-6)
    layers = load_layer_model(LEGACY / "layer_model")
    assert layers.boundaries == ("ILM", "RPE")
    assert torch.allclose(layers.net(x1), reference["layer_model"], atol=1e-6)
    # the encoder of any kind is usable as an initialisation
    for kind in ("classifier", "patch_classifier", "segmenter", "layer_model"):
        enc, _ = load_encoder(LEGACY / kind)
        assert enc.num_features > 0


def saved_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@torch.no_grad()
def test_every_kind_round_trips_through_one_format(tmp_path: Path) -> None:
    x3, x1 = inputs()
    torch.manual_seed(0)
    kw = {"width": 4}
    # encoder
    enc = build_encoder("convnet", **kw).eval()
    save_encoder(tmp_path / "encoder", enc, arch="convnet", kwargs=kw, preprocess={"size": 32}, method="rotation")
    back, meta = load_encoder(tmp_path / "encoder")
    assert torch.equal(back.eval()(x3), enc(x3)) and meta["preprocess"] == {"size": 32}
    # classifier
    method = build_method("supervised", {"task": "multiclass", "num_classes": 3}, build_encoder("convnet", **kw)).eval()
    task = TaskSpec(name="grade", kind="multiclass", label="dr_grade", num_classes=3)
    save_classifier(tmp_path / "classifier", method, arch="convnet", kwargs=kw, preprocess={}, task=task)
    loaded, task_back, _ = load_classifier(tmp_path / "classifier")
    assert task_back == task
    assert torch.equal(loaded.head(loaded.encoder(x3)), method.head(method.encoder(x3)))
    # patch classifier
    enc = build_encoder("convnet", **kw)
    patch = PatchClassifier(enc, nn.Linear(enc.num_features, 1), "tanh", 32, 8).eval()
    patch.save(tmp_path / "patch", arch="convnet", kwargs=kw, method="ssl-gan", preprocess={})
    patch_back, _ = PatchClassifier.load(tmp_path / "patch")
    assert patch_back.input_range == "tanh" and torch.equal(patch_back(x3), patch(x3))
    assert patch_back.image_score == "sum"                          # the paper's rule unless set
    patch.image_score = "tissue"
    patch.save(tmp_path / "patch-tissue", arch="convnet", kwargs=kw, method="ssl-gan", preprocess={})
    assert PatchClassifier.load(tmp_path / "patch-tissue")[0].image_score == "tissue"
    # segmenter
    cfg = load_config(SegmentConfig, None, ["data.source=synthetic", "preprocess.size=32", "model.arch=unet",
                                            "model.kwargs={channels: [4, 8]}", "method={name: segmentation, patch_size: 16}"])
    vessel, info = build_vessel_method(cfg, 1)
    save_segmenter(tmp_path / "segmenter", vessel.eval(), info, cfg)
    seg = load_segmenter(tmp_path / "segmenter")
    unet = vessel.unet().eval()
    assert torch.equal(seg.model(segmenter_input(unet)), unet(segmenter_input(unet)))
    # layer model
    net = UNet(build_encoder("unet", in_channels=1, channels=[4, 8]), 3).eval()
    LayerModel(net, ("ILM", "BM"), (32, 32), "unet", {"in_channels": 1, "channels": [4, 8]}).save(tmp_path / "layers")
    assert torch.equal(load_layer_model(tmp_path / "layers").net(x1), net(x1))
    kinds = {}
    for name in ("encoder", "classifier", "patch", "segmenter", "layers"):
        assert saved_files(tmp_path / name) == {META, WEIGHTS}, name
        meta = json.loads((tmp_path / name / META).read_text())
        assert meta["format"] == "retinassl-model" and meta["format_version"] == 2
        assert {"arch", "kwargs", "num_features", "versions", "created"} <= set(meta)
        kinds[name] = meta["kind"]
        # every kind holds its encoder under encoder.*: any of them initialises another model
        assert load_encoder(tmp_path / name)[0].num_features == meta["num_features"]
    assert kinds == {"encoder": "encoder", "classifier": "classifier", "patch": "patch-classifier",
                     "segmenter": "segmenter", "layers": "layer-model"}


def test_bad_saved_models_are_named(tmp_path: Path) -> None:
    enc = build_encoder("convnet", width=4)
    save_encoder(tmp_path / "e", enc, arch="convnet", kwargs={"width": 4})
    with pytest.raises(CheckpointError, match="a saved encoder model, not classifier"):
        load_classifier(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / META).read_text())
    del meta["arch"]
    (tmp_path / "e" / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model.json: no 'arch'"):
        read_model_meta(tmp_path / "e")
    (tmp_path / "e" / META).write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        read_model(tmp_path / "e")
    (tmp_path / "f").mkdir()
    with pytest.raises(CheckpointError, match="no model.json found"):
        read_model(tmp_path / "f")


def test_one_module_writes_safetensors_files() -> None:
    writers = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                     if re.search(r"\bsave_file\(", p.read_text()))
    assert writers == ["io/saved_model.py"]

"""External weights: torchvision- and timm-named ResNet state dicts (built by hand here, neither
package is installed) map onto our encoders exactly, and weights that do not fit are refused with the
keys named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from retinassl.config import ModelConfig
from retinassl.errors import CheckpointError
from retinassl.models import build_encoder
from retinassl.models.external import load_external_weights, map_state_dict
from retinassl.models.initialize import initial_encoder


def torchvision_state(arch: str = "resnet18", seed: int = 0, classes: int = 1000) -> dict[str, torch.Tensor]:
    """A state dict laid out like torchvision's ``resnetXX(weights=...)``: our trunk's names with
    random values, the ``fc`` classifier, and (like the original ImageNet files) no
    ``num_batches_tracked`` counters."""
    g = torch.Generator().manual_seed(seed)
    ref = build_encoder(arch)
    state = {k: 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
             for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    width = ref.num_features
    state["fc.weight"] = torch.randn(classes, width, generator=g)
    state["fc.bias"] = torch.randn(classes, generator=g)
    return state


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def assert_loaded(encoder, state: dict[str, torch.Tensor]) -> None:
    own = encoder.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k


def test_torchvision_resnet18_with_ddp_prefix(tmp_path: Path) -> None:
    state = torchvision_state("resnet18")
    path = save({f"module.{k}": v for k, v in state.items()}, tmp_path / "resnet18.safetensors")
    encoder = build_encoder("resnet18")
    report = load_external_weights(encoder, path)
    assert_loaded(encoder, state)
    assert report.stripped_prefixes == ["module."]
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert len(report.filled) == sum(1 for k in encoder.state_dict() if k.endswith("num_batches_tracked"))
    encoder.eval()
    assert torch.isfinite(encoder(torch.rand(1, 3, 64, 64))).all()


def test_timm_resnet50_pth_needs_allow_pickle(tmp_path: Path) -> None:
    # timm's resnet50 uses torchvision's parameter names; its training checkpoints wrap the weights
    # in {"state_dict": ...}, here also with Lightning's "model." prefix and num_batches_tracked.
    state = torchvision_state("resnet50", seed=1)
    own = build_encoder("resnet50").state_dict()
    state.update({k: torch.tensor(7) for k in own if k.endswith("num_batches_tracked")})
    path = tmp_path / "resnet50_timm.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError, match="refusing to load a pickle-based checkpoint"):
        load_external_weights(build_encoder("resnet50"), path)
    encoder = build_encoder("resnet50")
    report = load_external_weights(encoder, path, allow_pickle=True)
    assert_loaded(encoder, state)
    assert report.stripped_prefixes == ["model."] and report.filled == []


def test_timm_head_names_are_dropped_and_prefix_selects_a_subtree() -> None:
    state = torchvision_state("resnet18")
    fc_w, fc_b = state.pop("fc.weight"), state.pop("fc.bias")
    moco = {f"module.encoder_q.{k}": v for k, v in state.items()}
    moco.update({"module.encoder_q.head.fc.weight": fc_w, "module.encoder_q.head.fc.bias": fc_b,
                 "module.encoder_k.conv1.weight": state["conv1.weight"], "queue": torch.zeros(3)})
    encoder = build_encoder("resnet18")
    mapped, report = map_state_dict(moco, encoder, prefix="module.encoder_q.")
    assert sorted(report.dropped) == ["head.fc.bias", "head.fc.weight"]
    encoder.load_state_dict(mapped)
    assert_loaded(encoder, state)


def test_grayscale_encoder_sums_the_rgb_filters() -> None:
    state = torchvision_state("resnet18")
    encoder = build_encoder("resnet18", in_channels=1)
    mapped, report = map_state_dict(state, encoder)
    encoder.load_state_dict(mapped)
    assert torch.allclose(encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert report.adapted and "conv1.weight" in report.adapted[0]
    # a grey image through the summed filters = the same image in 3 channels through the originals
    rgb = build_encoder("resnet18")
    rgb.load_state_dict(map_state_dict(state, rgb)[0])
    grey = torch.rand(1, 1, 64, 64)
    rgb.eval(), encoder.eval()
    assert torch.allclose(rgb(grey.expand(1, 3, 64, 64)), encoder(grey), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant, message", [
    ({"conv1.0.weight": torch.zeros(32, 3, 3, 3)}, "deep-stem ResNet-C/D"),
    ({"stem.conv.weight": torch.zeros(64, 3, 7, 7), "stages.0.blocks.0.conv1.weight": torch.zeros(1)},
     "ResNetV2/BiT"),
    ({"layer1.0.downsample.2.weight": torch.zeros(1)}, "average-pool downsampling"),
    ({"layer1.0.se.fc1.weight": torch.zeros(1)}, "squeeze-and-excitation"),
])
def test_resnet_variants_are_refused_by_name(tmp_path: Path, variant: dict, message: str) -> None:
    state = {**torchvision_state("resnet18"), **variant}
    with pytest.raises(CheckpointError, match=message):
        load_external_weights(build_encoder("resnet18"), save(state, tmp_path / "v.safetensors"))


def test_weights_that_do_not_fit_name_missing_unexpected_and_mis_shaped_keys(tmp_path: Path) -> None:
    # resnet50 (bottleneck) weights into a resnet18: conv3 keys are unexpected, shapes differ
    path = save(torchvision_state("resnet50"), tmp_path / "r50.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_external_weights(build_encoder("resnet18"), path)
    text = str(info.value)
    assert str(path) in text and "weights do not fit the model" in text
    assert "165 unexpected (e.g. layer1.0.bn3.bias" in text, text
    assert "with other shapes (e.g. layer1.0.conv1.weight: checkpoint (64, 64, 1, 1)" in text, text
    # a truncated file: the missing keys are named
    state = torchvision_state("resnet18")
    del state["layer4.1.bn2.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. layer4.1.bn2.weight\)"):
        load_external_weights(build_encoder("resnet18"), save(state, tmp_path / "cut.safetensors"))


def test_model_init_accepts_an_external_file(tmp_path: Path) -> None:
    state = torchvision_state("resnet18")
    path = save(state, tmp_path / "imagenet.safetensors")
    initial = initial_encoder(ModelConfig(arch="resnet18", init=str(path)))
    assert initial.kind == "external" and initial.arch == "resnet18" and initial.kwargs == {}
    assert_loaded(initial.encoder, state)
    with pytest.raises(CheckpointError, match="neither 'scratch'"):
        initial_encoder(ModelConfig(arch="resnet18", init=str(tmp_path / "absent.safetensors")))

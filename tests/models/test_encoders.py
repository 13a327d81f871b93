"""Every registered encoder honours the one interface; ResNets have torchvision's names and sizes."""

from __future__ import annotations

import pytest
import torch

from retinassl.errors import ConfigError
from retinassl.models import build_encoder, encoder_names


@pytest.mark.parametrize("name", ["convnet", "resnet18", "resnet34", "resnet50", "unet"])
def test_interface(name: str) -> None:
    kwargs = {"width": 8} if name == "convnet" else ({"channels": (4, 8, 16)} if name == "unet" else {})
    encoder = build_encoder(name, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    pyramid = encoder.forward_pyramid(x)
    assert len(pyramid) == len(encoder.feature_channels) == len(encoder.reductions)
    for level, channels in zip(pyramid, encoder.feature_channels):
        assert level.shape[:2] == (2, channels)
    if name != "convnet":  # valid convolutions make the conv-large strides approximate
        for level, r in zip(pyramid, encoder.reductions):
            assert level.shape[-1] == 64 // r
    assert torch.equal(encoder.forward_features(x), pyramid[-1])
    emb = encoder(x)
    assert emb.shape == (2, encoder.num_features)
    assert torch.allclose(emb, pyramid[-1].mean(dim=(2, 3)))


def test_resnet_matches_torchvision_layout() -> None:
    # torchvision resnet18/50 have 11,689,512 / 25,557,032 parameters with a 1000-class fc
    fc18 = 512 * 1000 + 1000
    fc50 = 2048 * 1000 + 1000
    assert sum(p.numel() for p in build_encoder("resnet18").parameters()) == 11_689_512 - fc18
    assert sum(p.numel() for p in build_encoder("resnet50").parameters()) == 25_557_032 - fc50
    keys = list(build_encoder("resnet18").state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.0.bias" not in keys


def test_infrared_single_channel() -> None:
    assert build_encoder("resnet18", in_channels=1)(torch.randn(1, 1, 64, 64)).shape == (1, 512)


def test_unknown_encoder_and_bad_kwargs() -> None:
    with pytest.raises(ConfigError, match="unknown encoder 'vgg'; known: convnet"):
        build_encoder("vgg")
    with pytest.raises(ConfigError, match="encoder 'resnet18'"):
        build_encoder("resnet18", depth=3)
    assert {"convnet", "resnet18", "resnet34", "resnet50", "unet"} <= set(encoder_names())


def test_convnet_input_dropout_zeroes_without_rescaling_and_is_identity_in_eval() -> None:
    from retinassl.models.convnet import InputDropout
    drop = InputDropout(0.2)
    x = torch.rand(4, 3, 32, 32) * 0.9 + 0.1           # no zeros to begin with
    torch.manual_seed(0)
    y = drop.train()(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])                 # kept values exactly as they were
    assert abs(1 - float(kept.float().mean()) - 0.2) < 0.02
    assert torch.equal(drop.eval()(x), x)

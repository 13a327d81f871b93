"""The U-Net decoder over any encoder: output at the input size (also for stride-2 first levels and
odd sizes), initialisation from an encoder checkpoint, and encoder freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinassl.models.checkpoint import save_encoder
from retinassl.models import build_encoder
from retinassl.models.segmentation import UNet, unet_from_checkpoint

TINY = {"unet": {"channels": (4, 8, 16)}, "convnet": {"width": 4, "dropout": False},
        "resnet18": {}}


@pytest.mark.parametrize("arch", ["unet", "convnet", "resnet18"])
@pytest.mark.parametrize("size", [(64, 64), (48, 37)])
def test_output_at_input_size_and_gradients(arch: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = UNet(build_encoder(arch, in_channels=1, **TINY[arch]), out_channels=3, stem_channels=4)
    x = torch.randn(2, 1, *size)
    y = model(x)
    assert y.shape == (2, 3, *size)
    assert model.decoder.full_resolution == (arch != "unet")  # stride-2 first level -> full-res branch
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_single_channel_input_into_rgb_encoder() -> None:
    model = UNet(build_encoder("unet", in_channels=3, channels=(4, 8)))
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="input has 2 channels but the encoder expects 3"):
        model(torch.randn(1, 2, 32, 32))


def test_initialisation_from_an_encoder_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    encoder = build_encoder("resnet18", in_channels=1)
    for m in encoder.modules():  # non-default batch-norm statistics must be carried over as well
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    save_encoder(tmp_path / "encoder", encoder, arch="resnet18", kwargs={"in_channels": 1})
    model = unet_from_checkpoint(tmp_path / "encoder", out_channels=2, stem_channels=4)
    saved = encoder.state_dict()
    loaded = model.encoder.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert {k.split(".")[0] for k in model.state_dict()} == {"encoder", "decoder"}
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_frozen_encoder_gets_no_gradient_and_keeps_statistics() -> None:
    torch.manual_seed(0)
    model = UNet(build_encoder("unet", in_channels=1, channels=(4, 8)))
    model.freeze_encoder()
    model.train()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model(torch.randn(2, 1, 32, 32)).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    model.freeze_encoder(False)
    assert model.encoder.training
    model(torch.randn(2, 1, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())

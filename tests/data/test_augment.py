"""The per-channel gain (colour-cast) augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from retinassl.data.augment import channel_gain


def test_channel_gain_scales_each_channel_within_its_log_range() -> None:
    x = torch.rand(2000, 3, 4, 4) + 0.1
    out = channel_gain(x, torch.Generator().manual_seed(0), (0.1, 0.0, 0.8))
    factor = (out / x)[:, :, 0, 0]
    # one factor per sample and channel, the same at every pixel
    assert torch.allclose(out / x, factor[:, :, None, None].expand_as(x), rtol=1e-5)
    log = factor.log()
    assert log[:, 0].abs().max() <= 0.1 + 1e-6 and log[:, 0].abs().max() > 0.09
    assert torch.allclose(log[:, 1], torch.zeros(2000), atol=1e-6)
    assert log[:, 2].abs().max() <= 0.8 + 1e-6
    # u uniform in [-s, s]: the variance of log-gain is s^2 / 3
    assert log[:, 2].var().item() == pytest.approx(0.8 ** 2 / 3, rel=0.1)
    assert log[:, 2].mean().item() == pytest.approx(0.0, abs=0.05)


def test_channel_gain_is_seeded_and_off_at_zero() -> None:
    x = torch.rand(8, 3, 4, 4)
    a = channel_gain(x, torch.Generator().manual_seed(5), 0.3)
    b = channel_gain(x, torch.Generator().manual_seed(5), 0.3)
    assert torch.equal(a, b) and not torch.equal(a, x)
    generator = torch.Generator().manual_seed(5)
    assert channel_gain(x, generator, 0.0) is x
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=torch.Generator().manual_seed(5)))


def test_channel_gain_rejects_a_spread_per_wrong_number_of_channels() -> None:
    with pytest.raises(ValueError, match="2 spreads for 3 channels"):
        channel_gain(torch.rand(2, 3, 4, 4), torch.Generator(), (0.1, 0.2))
    with pytest.raises(ValueError, match=">= 0"):
        channel_gain(torch.rand(2, 3, 4, 4), torch.Generator(), -0.1)


def test_supervised_method_applies_the_configured_gain() -> None:
    from retinassl.errors import ConfigError
    from retinassl.methods.base import build_method
    from retinassl.models import build_encoder

    method = build_method("supervised", {"augment": "none", "channel_gain": [0.0, 0.0, math.log(2)]},
                          build_encoder("convnet", width=4))
    x = torch.ones(64, 3, 8, 8)
    out = method._augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :2], x[:, :2])
    assert out[:, 2].min() >= 0.5 - 1e-6 and out[:, 2].max() <= 2.0 + 1e-6 and out[:, 2].std() > 0.1
    with pytest.raises(ConfigError, match="greater than or equal to 0"):
        build_method("supervised", {"channel_gain": [0.1, -0.2, 0.3]}, build_encoder("convnet", width=4))

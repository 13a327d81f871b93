"""The ``mae`` method (He et al. 2022) on a tiny ViT: finite loss, gradients on every trainable
parameter, seeded masks, learning on a fixed batch, reconstructions, and a clear error for a
non-ViT encoder."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("retinassl.methods.pretext_base")  # the methods package (package reorganisation)

from retinassl.errors import ConfigError  # noqa: E402
from retinassl.methods.base import build_method, method_names  # noqa: E402
from retinassl.methods.mae import MAE  # noqa: E402
from retinassl.models import build_encoder  # noqa: E402

TINY = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


def make(**params) -> MAE:
    torch.manual_seed(0)
    encoder = build_encoder("vit", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32,
                            num_register_tokens=1, layer_scale=0.1)
    return build_method("mae", {**TINY, **params}, encoder)


def batch(seed: int = 0) -> dict:
    return {"image": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


def test_loss_gradients_and_seeds() -> None:
    assert "mae" in method_names()
    method = make()
    loss, _ = method.loss(batch(), "main", torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in method.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        same = method.loss(batch(), "main", torch.Generator().manual_seed(1))[0]
        other = method.loss(batch(), "main", torch.Generator().manual_seed(2))[0]
    assert torch.equal(same, loss.detach()) and not torch.equal(other, loss.detach())


def test_learns_a_fixed_batch_and_reconstructs() -> None:
    method = make(augment="none", lr=3e-3)
    optimizer = method.configure_optimizers()["main"]
    # smooth images (a ramp in a random direction per image): hidden patches follow from visible ones
    g = torch.Generator().manual_seed(3)
    angle = torch.rand(4, generator=g) * 6.28
    u = torch.linspace(-1, 1, 32)
    ramp = torch.cos(angle)[:, None, None] * u[None, None, :] + torch.sin(angle)[:, None, None] * u[None, :, None]
    images = {"image": ramp[:, None].expand(4, 3, 32, 32).contiguous()}
    losses = []
    for step in range(25):
        loss, _ = method.loss(images, "main", torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5  # measured: 0.98 -> 0.43
    masked, full, hidden = method.reconstruct(images["image"], torch.Generator().manual_seed(0))
    assert masked.shape == full.shape == (4, 3, 32, 32)
    assert torch.equal(hidden, (masked == 0).all(dim=1))  # the hidden pixels are the zeroed ones
    assert abs(float(hidden.float().mean()) - 0.75) < 1e-6  # 12 of 16 patches hidden
    assert torch.allclose(full[~hidden.unsqueeze(1).expand_as(full)],
                          images["image"][~hidden.unsqueeze(1).expand_as(full)])


def test_needs_a_vit() -> None:
    with pytest.raises(ConfigError, match="ViT"):
        build_method("mae", TINY, build_encoder("convnet", width=8))

"""The supervised method's acquisition augmentation: off by default (inputs unchanged), on when
configured, and the same for the same generator seed."""

from __future__ import annotations

import torch

from retinassl.methods.base import build_method
from retinassl.models import build_encoder


def augmented(params: dict, seed: int) -> torch.Tensor:
    method = build_method("supervised", {"augment": "none", **params}, build_encoder("convnet", width=4))
    x = torch.linspace(0.1, 0.9, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    return method._augment(x, torch.Generator().manual_seed(seed))


def test_acquisition_augmentation_is_off_by_default_and_seeded() -> None:
    x = torch.linspace(0.1, 0.9, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    assert torch.equal(augmented({}, 0), x)
    on = {"acquisition": {"gamma_probability": 1.0, "blur_probability": 1.0}}
    a, b, c = augmented(on, 0), augmented(on, 0), augmented(on, 1)
    assert not torch.equal(a, x) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1

"""Sliding-window reconstruction: a constant model gives a constant map without seams, an
identity-like model reproduces its input; probabilities map back to the original pixel grid."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from retinassl.data.field_of_view import Geometry, apply_geometry
from retinassl.data.preprocess import PreprocessConfig, compute_geometry
from retinassl.jobs.segment_inference import (InferenceConfig, sliding_window_probabilities,
                                                       to_original)

CONFIG = InferenceConfig(roi_size=32, overlap=0.5, sw_batch_size=4, precision="32")


class Constant(nn.Module):
    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.logit)


class Logit(nn.Module):
    """sigmoid(model(x)) == x for x in (0, 1): the identity through the sigmoid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x.clamp(1e-6, 1 - 1e-6))


def test_constant_model_gives_constant_map_without_seams() -> None:
    image = torch.rand(1, 77, 101)  # not a multiple of the window or the stride
    for blend in ("gaussian", "constant"):
        prob = sliding_window_probabilities(Constant(0.7), image, CONFIG.model_copy(update={"blend": blend}))
        assert prob.shape == (1, 77, 101)
        expected = torch.sigmoid(torch.tensor(0.7))
        assert torch.allclose(prob, expected.expand_as(prob), atol=1e-6)
        # no seams: no jump between neighbouring pixels anywhere
        assert prob.diff(dim=-1).abs().max() < 1e-6 and prob.diff(dim=-2).abs().max() < 1e-6


def test_identity_like_model_reproduces_its_input() -> None:
    image = torch.rand(2, 1, 70, 45) * 0.98 + 0.01
    prob = sliding_window_probabilities(Logit(), image, CONFIG)
    assert prob.shape == image.shape
    assert torch.allclose(prob, image, atol=1e-5)


def test_to_original_inverts_crop_and_pad() -> None:
    rng = np.random.default_rng(0)
    original = rng.random((30, 40)).astype(np.float32)  # H=30, W=40
    fov = np.zeros((30, 40), dtype=bool)
    fov[3:27, 5:33] = True
    config = PreprocessConfig(size=28, crop_fov=True)  # side = max(28, 24) = 28: no resize
    geometry = compute_geometry(fov, 1.0, (40, 30), config)
    cached = apply_geometry((original * 255).astype(np.uint8), geometry)
    back = to_original(cached.astype(np.float32), geometry)
    assert back.shape == (30, 40)
    box = (slice(3, 27), slice(5, 33))
    assert np.array_equal(back[box], (original * 255).astype(np.uint8)[box].astype(np.float32))
    assert (back[:3] == 0).all() and (back[:, 33:] == 0).all()


def test_to_original_with_resize_is_close() -> None:
    geometry = Geometry(box=(0, 0, 40, 30), side=40, pad_x=0, pad_y=5, size=20, original_size=(40, 30))
    smooth = np.fromfunction(lambda y, x: (x + y) / 80.0, (20, 20), dtype=np.float32)
    back = to_original(smooth, geometry)
    assert back.shape == (30, 40)
    # half-pixel-centred bilinear upsampling by 2 maps canvas (Y, X) to (X + Y - 1) / 160; the
    # original row y is canvas row y + 5 (the padding), so the original grid holds (x + y + 4) / 160
    expected = np.fromfunction(lambda y, x: (x + y + 4) / 160.0, (30, 40))
    assert np.abs(back[2:-2, 2:-2] - expected[2:-2, 2:-2]).max() < 1e-5

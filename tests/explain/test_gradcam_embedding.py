"""Grad-CAM points at the one bright lesion of a synthetic image; t-SNE is seeded and plotted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retinassl.jobs.features import state_hash
from retinassl.explain.embedding import tsne, tsne_figure
from retinassl.explain.gradcam import CamModel, grad_cam
from retinassl.models import Encoder, build_encoder
from retinassl.models.heads import LinearHead


class BrightnessEncoder(Encoder):
    """A hand-set 'lesion detector': mean channel brightness above 0.5, at stride 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 3)
            self.conv.bias.fill_(-0.5)
        self.num_features, self.feature_channels, self.reductions, self.in_channels = 1, (1,), (4,), 3

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.avg_pool2d(F.relu(self.conv(x)), 4)]


def lesion_image(size: int = 64, centre: tuple[int, int] = (44, 18), radius: int = 4) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    image = np.full((3, size, size), 0.2, dtype=np.float32)
    image[:, (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2] = 1.0
    return torch.from_numpy(image)[None]


def test_gradcam_highlights_the_single_bright_lesion() -> None:
    head = LinearHead(1, 1)
    with torch.no_grad():
        head.fc.weight.fill_(1.0)
        head.fc.bias.fill_(0.0)
    model = CamModel(BrightnessEncoder(), head, "binary")
    before = state_hash(model)
    cam = grad_cam(model, lesion_image())[0]
    assert cam.shape == (64, 64) and cam.min() >= 0 and cam.max() == 1.0
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert abs(peak[0] - 44) <= 4 and abs(peak[1] - 18) <= 4           # at the lesion (y, x)
    hot = cam > 0.5
    yy, xx = np.mgrid[:64, :64]
    assert hot.any() and np.all((yy[hot] - 44) ** 2 + (xx[hot] - 18) ** 2 <= 10 ** 2)
    assert cam[5:20, 40:60].max() < 0.05                                # far from it: cold
    assert state_hash(model) == before and all(p.grad is None for p in model.parameters())


def test_gradcam_on_registered_encoders_and_graded_output() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("resnet18")
    model = CamModel(encoder, LinearHead(encoder.num_features, 5), "multiclass", positive_from=2)
    maps = grad_cam(model, torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1)          # log-odds of grade >= 2


def test_tsne_seeded_and_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 15)
    features = rng.normal(size=(45, 20)) + labels[:, None] * 4.0
    a, b = tsne(features, seed=1), tsne(features, seed=1)
    assert a.shape == (45, 2) and np.allclose(a, b)
    centroids = np.stack([a[labels == c].mean(0) for c in range(3)])
    spread = np.mean([np.linalg.norm(a[labels == c] - centroids[c], axis=1).mean() for c in range(3)])
    assert min(np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i)) > spread
    path = tsne_figure(features, labels, tmp_path / "tsne.png", title="t", seed=1)
    assert path.is_file() and path.stat().st_size > 1000

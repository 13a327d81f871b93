"""The encoder interface every method takes and leaves behind (timm's ``forward_features``)."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Base class of all encoders.

    Subclasses set ``num_features`` (channels of :meth:`forward_features`), ``feature_channels``
    and ``reductions`` (channels and stride of each level of :meth:`forward_pyramid`), and
    ``in_channels``; they implement :meth:`forward_pyramid`.
    """

    num_features: int
    feature_channels: tuple[int, ...]
    reductions: tuple[int, ...]
    in_channels: int

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from shallow to deep: level ``i`` is ``(B, feature_channels[i], H / reductions[i], W / reductions[i])``."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> deepest feature map ``(B, num_features, H', W')``."""
        return self.forward_pyramid(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``(B, num_features)`` (global average over the deepest map)."""
        return self.forward_features(x).mean(dim=(2, 3))

"""Heads that sit on an encoder's pooled embedding, and the encoder + head classifier."""

from __future__ import annotations

import torch
from torch import nn

from retinassl.models.base import Encoder


class LinearHead(nn.Module):
    """``(B, in_features)`` -> ``(B, num_outputs)`` logits, with optional dropout."""

    def __init__(self, in_features: int, num_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


class Classifier(nn.Module):
    """An encoder and a linear head: ``(B, C, H, W)`` -> ``(B, num_outputs)`` logits."""

    def __init__(self, encoder: Encoder, num_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = LinearHead(encoder.num_features, num_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

"""Contrastive losses as plain functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of paired projections ``z1``, ``z2`` ``(B, D)`` (row ``i`` of each is a view of
    image ``i``): cosine similarities divided by ``temperature``, cross-entropy of each of the
    ``2B`` views against its partner over the other ``2B - 1``, averaged."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    partners = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, partners)

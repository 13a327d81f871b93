"""Losses of the semi-supervised K+1 GAN (Salimans et al. 2016, as used by Lecouat et al. 2018),
as plain functions of tensors.

Lecouat et al. 2018: "L_D = L_unsupervised + L_supervised", with
"L_supervised = -E_{(x,y) ~ I_L} [log p_D(y | x, y < K + 1)]" and
"L_unsupervised = -E_{x ~ I} [log[1 - p_D(y = K + 1 | x)]] - E_{x ~ G} [log[p_D(y = K + 1 | x)]]";
the generator minimises the feature-matching loss "|| E_{x ~ I} [h(x)] - E_{z ~ p_z(z)} [h(g(z))] ||_1".

**The fixed-zero logit.** The discriminator outputs only the K real-class logits ``l_1 .. l_K``; the
logit of the "generated" class K+1 is fixed at 0 (a softmax is unchanged when one subtracts the
same value from every logit, so this loses nothing). With ``Z(x) = sum_k exp l_k(x)``:

- ``p(fake | x) = 1 / (1 + Z(x)) = sigmoid(-lse(x))``, ``lse = log Z = logsumexp_k l_k``;
- ``-log(1 - p(fake | x)) = -log sigmoid(lse(x)) = softplus(-lse(x))``;
- ``-log p(fake | G(z)) = softplus(lse(G(z)))``;
- ``p(y | x, y < K + 1) = softmax(l)_y`` (the fake class drops out), so ``L_supervised`` is the
  ordinary cross-entropy over the K logits.

For K = 2 (healthy, diseased) the patch classifier's logit is ``l_diseased - l_healthy``:
``sigmoid(l_1 - l_0) = p(diseased | x, real)``. It is what the image score sums
(:mod:`retinassl.metrics.image_score`).

Shapes: logits ``(B, K)``, labels ``(B,)`` int64 in ``[0, K)``, features ``(B, F)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` real-class logits -> ``(B,)`` ``p(y = K + 1 | x)`` with the fake logit fixed at 0."""
    return torch.sigmoid(-torch.logsumexp(logits.float(), dim=1))


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor,
                    class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``-mean log p(y | x, y < K + 1)``: cross-entropy over the K real-class logits.

    ``class_weights`` ``(K,)``: a weighted mean (``sum_i w_{y_i} l_i / sum_i w_{y_i}``), as
    ``torch.nn.functional.cross_entropy`` defines it; None: the plain mean.
    """
    weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels.long(), weight=weight)


def unsupervised_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean log(1 - p_fake(x_real)) - mean log p_fake(G(z))`` (fake logit fixed at 0).

    Args:
        real_logits: ``(B, K)`` logits of real patches (labelled or not).
        fake_logits: ``(B', K)`` logits of generated patches.
    """
    lse_real = torch.logsumexp(real_logits.float(), dim=1)
    lse_fake = torch.logsumexp(fake_logits.float(), dim=1)
    return F.softplus(-lse_real).mean() + F.softplus(lse_fake).mean()


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor,
                          norm: Literal["l1", "l2"] = "l1") -> torch.Tensor:
    """Distance between the batch means of real and generated features ``(B, F)``.

    ``l1``: ``sum_f |mean_real_f - mean_fake_f|`` (Lecouat et al.'s ``||.||_1``); ``l2``: the
    squared Euclidean distance (Salimans et al. 2016). With Adam the overall scale of the loss does
    not change the updates, so a sum and a mean over features train alike.
    """
    diff = real_features.float().mean(dim=0) - fake_features.float().mean(dim=0)
    return diff.abs().sum() if norm == "l1" else diff.pow(2).sum()


def pull_away_term(features: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between the features ``(B, F)`` of different generated
    samples, ``sum_{i != j} cos(h_i, h_j)^2 / (B (B - 1))`` (Zhao et al. 2017's pull-away term, which
    Dai et al. 2017 add to the feature-matching generator of semi-supervised GANs): 1 when every
    sample has the same features, so minimising it spreads the generator's samples."""
    n = features.shape[0]
    if n < 2:
        raise ValueError("the pull-away term needs at least 2 samples")
    unit = F.normalize(features.float(), dim=1)
    cos2 = (unit @ unit.T).pow(2)
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))


def patch_logit(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` logits (healthy, diseased) -> ``(B,)`` classifier logit ``l_1 - l_0``."""
    if logits.shape[1] != 2:
        raise ValueError(f"patch_logit needs K = 2 logits (healthy, diseased), got {logits.shape[1]}")
    return logits[:, 1] - logits[:, 0]


def feature_variance_ratio(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """Mean per-feature variance over the batch of generated features divided by that of real ones
    (``(B, F)`` features, or patches flattened to ``(B, C*H*W)``).

    A generator that has collapsed to (nearly) one output gives a ratio near 0.
    """
    real = real_features.detach().float().var(dim=0).mean()
    fake = fake_features.detach().float().var(dim=0).mean()
    return float(fake / real.clamp_min(1e-12))

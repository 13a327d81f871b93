"""SSL-GAN losses against values worked out by hand, the fixed-zero-logit trick against the explicit
K+1 softmax, and the image-score aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retinassl.losses import gan as L
from retinassl.metrics.image_score import image_scores

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_supervised_loss_by_hand() -> None:
    # patch 1: logits (0, ln 3) -> p(diseased | real) = 3 / (1 + 3); label 1
    # patch 2: logits (ln 2, 0) -> p(healthy | real) = 2 / (2 + 1); label 0
    logits = torch.tensor([[0.0, LN3], [LN2, 0.0]])
    labels = torch.tensor([1, 0])
    expected = (-math.log(3 / 4) - math.log(2 / 3)) / 2
    assert abs(float(L.supervised_loss(logits, labels)) - expected) < 1e-6
    # class weights (1, 4): the diseased patch counts 4 times, normalised by the weights' sum
    weighted = (4 * -math.log(3 / 4) + 1 * -math.log(2 / 3)) / (4 + 1)
    assert abs(float(L.supervised_loss(logits, labels, torch.tensor([1.0, 4.0]))) - weighted) < 1e-6


def test_unsupervised_loss_by_hand() -> None:
    # real patch: exp-logits 1 and 3, Z = 4, p(fake) = 1 / (1 + 4) -> -log(1 - 1/5) = log(5/4)
    # generated patch: exp-logits 1 and 1, Z = 2, p(fake) = 1 / 3 -> -log(1/3) = log 3
    real = torch.tensor([[0.0, LN3]])
    fake = torch.tensor([[0.0, 0.0]])
    assert abs(float(L.fake_probability(real)) - 1 / 5) < 1e-6
    assert abs(float(L.fake_probability(fake)) - 1 / 3) < 1e-6
    assert abs(float(L.unsupervised_loss(real, fake)) - (math.log(5 / 4) + LN3)) < 1e-6
    # two real patches average: the second has Z = 2 + 1 = 3 -> p(fake) = 1/4 -> log(4/3)
    real2 = torch.tensor([[0.0, LN3], [LN2, 0.0]])
    expected = (math.log(5 / 4) + math.log(4 / 3)) / 2 + LN3
    assert abs(float(L.unsupervised_loss(real2, fake)) - expected) < 1e-6


def test_fixed_zero_logit_matches_explicit_k_plus_1_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(7, 2, generator=g) * 3
    fake = torch.randn(5, 2, generator=g) * 3
    labels = torch.randint(0, 2, (7,), generator=g)
    pad = lambda x: torch.cat([x, torch.zeros(len(x), 1)], 1)  # noqa: E731  (logit of "fake" = 0)
    p_real, p_fake = torch.softmax(pad(real), 1), torch.softmax(pad(fake), 1)
    unsup = -torch.log(1 - p_real[:, 2]).mean() - torch.log(p_fake[:, 2]).mean()
    sup = -torch.log(p_real[torch.arange(7), labels] / (1 - p_real[:, 2])).mean()
    assert torch.allclose(L.unsupervised_loss(real, fake), unsup, atol=1e-5)
    assert torch.allclose(L.supervised_loss(real, labels), sup, atol=1e-5)
    # the patch classifier logit l_1 - l_0 gives p(diseased | x, real)
    assert torch.allclose(torch.sigmoid(L.patch_logit(real)), p_real[:, 1] / (1 - p_real[:, 2]), atol=1e-6)


def test_feature_matching_by_hand() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])   # batch mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]])   # batch mean (1, 1)
    assert float(L.feature_matching_loss(real, fake, "l1")) == 3.0   # |2-1| + |3-1|
    assert float(L.feature_matching_loss(real, fake, "l2")) == 5.0   # 1 + 4
    # variance ratio: fake per-feature variances (2, 2) vs real (2, 2)
    assert abs(L.feature_variance_ratio(real, fake) - 1.0) < 1e-6
    assert L.feature_variance_ratio(real, torch.ones(2, 2)) == 0.0


def test_image_score_is_sum_of_patch_sigmoids() -> None:
    logits = np.array([[0.0, LN3, -LN3], [10.0, 10.0, 10.0]])
    # sigmoid(0) + sigmoid(ln 3) + sigmoid(-ln 3) = 1/2 + 3/4 + 1/4
    scores = image_scores(logits)
    assert abs(scores[0] - 1.5) < 1e-12
    assert abs(scores[1] - 3 / (1 + math.exp(-10))) < 1e-12


def test_pull_away_term_by_hand() -> None:
    # cosines: (1,0)-(0,1) 0, (1,0)-(1,1) and (0,1)-(1,1) 1/sqrt(2): squares 0, 1/2, 1/2 (each pair
    # counted twice) over 3 * 2 ordered pairs = 2 / 6
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert abs(float(L.pull_away_term(h)) - 1 / 3) < 1e-6
    assert abs(float(L.pull_away_term(torch.tensor([[2.0, 1.0]] * 4))) - 1.0) < 1e-6   # one sample
    assert float(L.pull_away_term(torch.eye(5))) == 0.0                                  # orthogonal
    with pytest.raises(ValueError):
        L.pull_away_term(torch.ones(1, 3))

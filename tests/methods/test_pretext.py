"""The pretext tasks build the targets they claim: patch geometry, rotations, heatmaps, masks, and
NT-Xent against a slow reference implementation."""

from __future__ import annotations

import math

import pytest
import torch

from retinassl.methods.base import build_method
from retinassl.models import build_encoder
from retinassl.methods.crops import crop_patches, inscribed_circle
from retinassl.losses.regression import masked_mse
from retinassl.methods.inpainting import central_masks, random_block_masks
from retinassl.methods.offset_heatmap import gaussian_heatmaps, heatmap_argmax
from retinassl.methods.relative_position import NEIGHBOURS
from retinassl.losses.contrastive import nt_xent


def coordinate_image(batch: int, size: int) -> torch.Tensor:
    """Channel 0 = x of the pixel centre, channel 1 = y, channel 2 = 1."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)]).expand(batch, 3, size, size).clone()


def tiny_method(name: str, **params):
    torch.manual_seed(0)
    return build_method(name, params, build_encoder("convnet", width=4, dropout=False))


def test_crop_patches_matches_slicing_at_integer_positions() -> None:
    x = torch.rand(2, 3, 20, 20)
    centres = torch.tensor([[6.0, 9.0], [10.0, 10.0]])  # (x, y): a 4-pixel crop spans [4, 8) x [7, 11)
    out = crop_patches(x, centres, side=4, out_size=4)
    assert torch.allclose(out[0], x[0, :, 7:11, 4:8], atol=1e-6)
    assert torch.allclose(out[1], x[1, :, 8:12, 8:12], atol=1e-6)


def test_relative_position_second_patch_is_the_labelled_neighbour() -> None:
    method = tiny_method("relative_position", patch_fraction=0.2, gap=0.5, jitter=0.0, patch_size=8)
    size = 100
    first, second, labels = method.make_pairs(coordinate_image(32, size), torch.Generator().manual_seed(0))
    pitch = 0.2 * size * 1.5
    shift = torch.stack([second[:, 0].mean((1, 2)) - first[:, 0].mean((1, 2)),
                         second[:, 1].mean((1, 2)) - first[:, 1].mean((1, 2))], 1)
    expected = torch.tensor(NEIGHBOURS, dtype=torch.float32)[labels] * pitch
    assert torch.allclose(shift, expected, atol=1e-3)
    assert set(labels.tolist()) <= set(range(8)) and len(set(labels.tolist())) > 4
    # the whole 3x3 neighbourhood stays inside the image: no zero padding in any patch
    assert (first[:, 2] > 0.999).all() and (second[:, 2] > 0.999).all()


def test_relative_position_jitter_is_bounded_and_colour_dropping_keeps_one_channel() -> None:
    size, side = 100, 20.0
    plain = tiny_method("relative_position", patch_fraction=0.2, jitter=0.1, patch_size=8)
    first, second, labels = plain.make_pairs(coordinate_image(64, size), torch.Generator().manual_seed(1))
    shift = torch.stack([second[:, c].mean((1, 2)) - first[:, c].mean((1, 2)) for c in (0, 1)], 1)
    deviation = shift - torch.tensor(NEIGHBOURS, dtype=torch.float32)[labels] * side * 1.5
    assert deviation.abs().max() <= 2 * 0.1 * side + 1e-3 and deviation.abs().max() > 0.5
    dropping = tiny_method("relative_position", patch_fraction=0.2, jitter=0.1, patch_size=8,
                           color_dropping=True)
    x = coordinate_image(16, size) + 1
    first, _, _ = dropping.make_pairs(x, torch.Generator().manual_seed(1))
    means = first.mean((2, 3))
    big = (means > 0.5).sum(1)  # the kept channel keeps its values; the others are faint noise
    assert (big == 1).all() and (means[means <= 0.5].abs() < 0.1).all()


def test_offset_heatmap_pairs_and_targets() -> None:
    method = tiny_method("offset_heatmap", patch_fraction=0.25, max_offset=0.5, patch_size=8, heatmap_size=9)
    size = 80
    reference, query, offsets = method.make_pairs(coordinate_image(16, size), torch.Generator().manual_seed(0))
    side = 0.25 * size
    shift = torch.stack([query[:, 0].mean((1, 2)) - reference[:, 0].mean((1, 2)),
                         query[:, 1].mean((1, 2)) - reference[:, 1].mean((1, 2))], 1)
    assert torch.allclose(shift, offsets * side, atol=1e-3)
    assert offsets.abs().max() <= 0.5
    targets = gaussian_heatmaps(offsets, 0.5, 9, sigma=1.0)
    assert targets.shape == (16, 9, 9) and targets.max() <= 1
    cell = 1.0 / 8
    assert ((heatmap_argmax(targets, 0.5) - offsets).abs() <= cell / 2 + 1e-6).all()
    exact = gaussian_heatmaps(torch.tensor([[0.25, -0.125]]), 0.5, 9, sigma=1.0)
    assert exact[0, 3, 6] == pytest.approx(1.0)  # row = dy index (-0.125 -> 3), column = dx (0.25 -> 6)


def test_rotation_inputs_are_the_four_rotations_with_one_outline() -> None:
    method = tiny_method("rotation", augment="none", copies="all", circle_mask=True)
    x = torch.rand(3, 3, 16, 16) + 0.1
    rotated, labels = method.make_inputs(x, torch.Generator().manual_seed(0))
    masked = x * inscribed_circle(16, 16)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for k in range(4):
        assert torch.equal(rotated[3 * k:3 * k + 3], torch.rot90(masked, k, dims=(-2, -1)))
    outline = rotated != 0
    assert all(torch.equal(outline[0], outline[3 * k]) for k in range(4))
    rnd = tiny_method("rotation", augment="none", copies="random", circle_mask=False)
    rotated, labels = rnd.make_inputs(x, torch.Generator().manual_seed(0))
    for i in range(3):
        assert torch.equal(rotated[i], torch.rot90(x[i], int(labels[i]), dims=(-2, -1)))


def test_inpainting_masks_and_masked_loss() -> None:
    masks = random_block_masks(64, 32, 32, blocks=4, fraction=0.25, generator=torch.Generator().manual_seed(0))
    coverage = masks.mean((1, 2, 3))
    assert (coverage > 0).all() and (coverage <= 0.25 + 1e-6).all()
    assert central_masks(2, 32, 32, 0.25).mean() == pytest.approx(0.25)
    target = torch.rand(2, 3, 32, 32)
    mask = central_masks(2, 32, 32, 0.25)
    prediction = target + 5 * (1 - mask)  # wrong only outside the hole
    assert masked_mse(prediction, target, mask) == 0
    assert masked_mse(target + 0.5, target, mask) == pytest.approx(0.25)


def slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z)
    b = len(z1)
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(num / den)
    return total / n


def test_nt_xent_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (0.1, 0.5, 1.0):
        assert float(nt_xent(z1, z2, t)) == pytest.approx(slow_nt_xent(z1, z2, t), rel=1e-5)
    # identical views are easier to match than unrelated ones
    assert nt_xent(z1, z1, 0.2) < nt_xent(z1, z2, 0.2)


def test_autoencoder_decoder_sees_only_the_code() -> None:
    method = tiny_method("autoencoder", decoder_width=16, bottleneck=4, augment="none")
    method.eval()
    x = torch.rand(2, 3, 64, 64)
    seen = {}

    def record(module, args):
        seen["shape"] = args[0].shape

    method.decoder.register_forward_pre_hook(record)
    out = method(x)
    assert out.shape == x.shape
    assert seen["shape"] == method.encoder.forward_features(x).shape  # deepest map only, no skips


def test_supervised_bag_loss_is_the_max_patch_bce_by_hand() -> None:
    """Patches of constant value v get logit v (a stand-in forward); a bag's logit is its largest."""
    method = build_method("supervised", {"augment": "none", "bag_weight": 0.5}, build_encoder("convnet", width=4))
    method.forward = lambda x: x.mean(dim=(1, 2, 3))  # type: ignore[method-assign]

    def patches(values: list) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.float32)
        return t[..., None, None, None].expand(*t.shape, 3, 2, 2)
    batch = {"image": patches([0.5, -1.0]), "label": torch.tensor([1, 0]),
             "bag_image": patches([[-2.0, 1.0, 0.3], [0.1, -0.4, -3.0]]), "bag_label": torch.tensor([1, 0])}
    loss, metrics = method.loss(batch, "main", torch.Generator().manual_seed(0))

    def bce(logit: float, label: int) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -math.log(p if label else 1 - p)
    patches_sum = bce(0.5, 1) + bce(-1.0, 0)
    bags_sum = bce(1.0, 1) + bce(0.1, 0)                 # the bags' largest logits, 1.0 and 0.1
    # the mean over 4 items, each bag weighing 0.5 of a patch
    assert float(loss) == pytest.approx((patches_sum + 0.5 * bags_sum) / 4, rel=1e-6)
    assert metrics["bag_loss"] == pytest.approx(bags_sum / 2, rel=1e-6)
    only_bags = {**batch, "image": torch.zeros(0, 3, 2, 2), "label": torch.zeros(0, dtype=torch.long)}
    assert float(method.loss(only_bags, "main", torch.Generator())[0]) == pytest.approx(0.5 * bags_sum / 2, rel=1e-6)

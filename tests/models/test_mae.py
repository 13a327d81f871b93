"""Masked-autoencoder pieces: seeded masking, the encoder on visible patches only, MAE's patch order,
the normalised-pixel loss against a hand computation, and the decoder's un-shuffling."""

from __future__ import annotations

import torch

from retinassl.models import build_encoder
from retinassl.models.mae import (MAEDecoder, mae_loss, patchify, reconstruction, sincos_pos_embed_2d,
                                  unpatchify)
from retinassl.models.vit_blocks import random_masking


def small_vit(**kw):
    torch.manual_seed(0)
    return build_encoder("vit", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, **kw).eval()


def test_random_masking_is_seeded_and_consistent() -> None:
    keep, mask, restore = random_masking(3, 16, 0.75, torch.Generator().manual_seed(1))
    again = random_masking(3, 16, 0.75, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip((keep, mask, restore), again))
    assert keep.shape == (3, 4) and mask.shape == (3, 16) and mask.sum(1).tolist() == [12.0] * 3
    for row in range(3):
        assert set(keep[row].tolist()) == set(torch.nonzero(mask[row] == 0).flatten().tolist())
        # restore puts [visible..., hidden...] back in grid order
        order = torch.cat([keep[row], torch.nonzero(mask[row]).flatten()])
        shuffled = torch.arange(16)[order]
        assert set(shuffled[restore[row]].tolist()) == set(range(16))


def test_encoder_on_visible_patches_equals_the_full_encoder_on_them() -> None:
    """Attention is permutation-equivariant and positions are added before the gather, so encoding
    a permutation of all patches gives the full encoding permuted; and with registers too."""
    for kw in ({}, {"num_register_tokens": 2, "layer_scale": 0.1}):
        model = small_vit(**kw)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        perm = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
        with torch.no_grad():
            full, _ = model.tokens(x)
            permuted, _ = model.tokens(x, keep=perm)
        prefix = model.num_prefix_tokens
        expected = torch.gather(full[:, prefix:], 1, perm[..., None].expand(-1, -1, 32))
        assert torch.allclose(permuted[:, prefix:], expected, atol=1e-5)
        assert torch.allclose(permuted[:, :prefix], full[:, :prefix], atol=1e-5)
        keep, _, _ = random_masking(2, 16, 0.75, torch.Generator().manual_seed(5))
        visible, _ = model.tokens(x, keep=keep)
        assert visible.shape == (2, prefix + 4, 32)


def test_patchify_order_and_inverse() -> None:
    images = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    patches = patchify(images, 8)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    # patch (row 1, column 2) is index 1 * 3 + 2; its pixel (r, c, channel k) at (r * 8 + c) * 3 + k
    assert patches[1, 5, (4 * 8 + 6) * 3 + 2] == images[1, 2, 8 + 4, 16 + 6]
    assert torch.equal(unpatchify(patches, 8, (2, 3), 3), images)


def test_normalised_pixel_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 1, 4, 4, generator=g)
    pred = torch.randn(1, 4, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    total = 0.0
    for i, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        pix = [float(images[0, 0, r + a, c + b]) for a in range(2) for b in range(2)]
        mean = sum(pix) / 4
        var = sum((v - mean) ** 2 for v in pix) / 3
        target = [(v - mean) / (var + 1e-6) ** 0.5 for v in pix]
        err = sum((float(pred[0, i, j]) - target[j]) ** 2 for j in range(4)) / 4
        total += err * float(mask[0, i])
    assert abs(float(mae_loss(pred, images, mask, 2)) - total / 2) < 1e-5
    # the reconstruction keeps visible patches and puts a perfect prediction back on the pixels
    from retinassl.models.mae import patch_targets

    target, _, _ = patch_targets(images, 2)
    assert torch.allclose(reconstruction(target, images, mask, 2), images, atol=1e-5)


def test_decoder_unshuffles_and_trains() -> None:
    """With nothing hidden, the decoder's output does not depend on the order the encoder saw the
    patches in (restore undoes it); gradients reach every trainable parameter."""
    model = small_vit()
    torch.manual_seed(1)
    decoder = MAEDecoder(32, 8, 3, (4, 4), num_prefix_tokens=1, decoder_dim=16, depth=1, num_heads=2).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    outs = []
    for seed in (0, 1):
        keep, _, restore = random_masking(1, 16, 0.0, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            tokens, _ = model.tokens(x, keep=keep)
            outs.append(decoder(model.norm(tokens), restore, (4, 4)))
    assert outs[0].shape == (1, 16, 8 * 8 * 3)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    model.train(), decoder.train()
    keep, mask, restore = random_masking(2, 16, 0.75, torch.Generator().manual_seed(3))
    x2 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    tokens, _ = model.tokens(x2, keep=keep)
    loss = mae_loss(decoder(model.norm(tokens), restore, (4, 4)), x2, mask, 8)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in list(model.named_parameters()) + list(decoder.named_parameters()):
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not decoder.decoder_pos_embed.requires_grad


def test_sincos_embedding() -> None:
    emb = sincos_pos_embed_2d(8, (2, 3))
    assert emb.shape == (1, 7, 8) and torch.equal(emb[0, 0], torch.zeros(8))
    # patch (row 1, column 2): first half encodes the column, second the row; frequency 1 at k = 0
    assert torch.isclose(emb[0, 1 + 5, 0], torch.sin(torch.tensor(2.0)))
    assert torch.isclose(emb[0, 1 + 5, 4], torch.sin(torch.tensor(1.0)))

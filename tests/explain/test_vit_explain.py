"""ViT explanations: Grad-CAM on the patch-token map (patch-grid map upsampled to the image, equal to
a hand computation, pointing at a planted patch) and attention rollout (the attention probabilities
are the block's own, the rollout equals a numpy product, a planted key draws the class token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retinassl.explain.gradcam import CamModel, grad_cam
from retinassl.explain.vit_attention import attention_maps, attention_rollout
from retinassl.models import build_encoder
from retinassl.models.heads import LinearHead

U = torch.tensor([1.0, -1, 1, -1, 0, 0, 0, 0])   # background token (zero mean)
V = torch.tensor([0.0, 0, 0, 0, 1, -1, 1, -1])   # planted token, orthogonal to U
PLANTED = (2, 1)                                  # grid row, column (4 px patches, 16 px image)


def planted_image() -> torch.Tensor:
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0] = 1.0
    r, c = PLANTED
    x[:, 1, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 1.0
    return x


def planted_vit(pooling: str, attend_to_planted: bool = False):
    """8 wide, 1 block, 2 heads, 4 px patches, a class and a register token. Patch tokens are
    U (background) and U + V (planted patch); the block is an identity, or (``attend_to_planted``)
    every query attends to the token whose normalised value points along V."""
    vit = build_encoder("vit", embed_dim=8, depth=1, num_heads=2, patch_size=4, img_size=16,
                        num_register_tokens=1, pooling=pooling).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        for norm in (vit.norm, vit.blocks[0].norm1, vit.blocks[0].norm2):
            norm.weight.fill_(1.0)
        vit.patch_embed.proj.weight[:, 0] = U[:, None, None] / 16
        vit.patch_embed.proj.weight[:, 1] = V[:, None, None] / 16
        vit.cls_token[0, 0] = U
        vit.reg_token[0, 0] = U
        if attend_to_planted:
            qkv = vit.blocks[0].attn.qkv
            qkv.bias[0] = qkv.bias[4] = 10.0                   # every query: e0 (head 0), e4 (head 1)
            qkv.weight[8] = qkv.weight[12] = V / V.norm()      # key: the V component of LN(token)
    return vit


def test_gradcam_of_a_mean_pooled_vit_points_at_the_planted_patch() -> None:
    vit = planted_vit("mean")
    head = LinearHead(8, 1)
    with torch.no_grad():
        head.fc.weight[0] = V
        head.fc.bias.zero_()
    model = CamModel(vit, head, "binary")
    with torch.no_grad():
        assert torch.allclose(model(planted_image())[:, 0], head(vit(planted_image()))[:, 0])
    cam = grad_cam(model, planted_image())[0]
    assert cam.shape == (16, 16)
    r, c = PLANTED
    assert cam[4 * r + 1:4 * r + 3, 4 * c + 1:4 * c + 3].min() > 0.9    # the planted patch is hot
    far = np.ones((16, 16), bool)
    far[4 * r - 2:4 * r + 6, 4 * c - 2:4 * c + 6] = False
    assert cam[far].max() < 1e-6                                       # farther than half a patch: cold
    # a logit that reads against the planted patch makes it the coldest place
    with torch.no_grad():
        head.fc.weight[0] = -V
    against = grad_cam(model, planted_image())[0]
    assert against[4 * r + 1:4 * r + 3, 4 * c + 1:4 * c + 3].max() < against[far].min()


def test_gradcam_of_a_class_token_vit_equals_the_hand_computation() -> None:
    torch.manual_seed(3)
    vit = build_encoder("vit", embed_dim=16, depth=2, num_heads=2, patch_size=4, img_size=16,
                        num_register_tokens=1, layer_scale=0.5).eval()
    head = LinearHead(16, 1)
    x = torch.randn(2, 3, 20, 24)                  # a 5 x 6 patch grid (position embedding resampled)
    model = CamModel(vit, head, "binary")
    cams = grad_cam(model, x)
    assert cams.shape == (2, 20, 24)
    # by hand: the tokens entering the last block, the class token's logit through that block
    _, (entering,) = vit.tokens(x, taps=(1,))
    entering = entering.detach().requires_grad_(True)
    logit = head(vit.pool(vit.blocks[1](entering)))[:, 0]
    grad, = torch.autograd.grad(logit.sum(), entering)
    acts, grad = entering[:, 2:].detach(), grad[:, 2:]          # drop the class and register token
    assert grad.abs().max() > 0                                 # the class token reads these tokens
    weights = grad.mean(dim=1, keepdim=True)                    # (B, 1, D): mean over the patches
    grid = F.relu((weights * acts).sum(-1)).reshape(2, 1, 5, 6)
    up = F.interpolate(grid, size=(20, 24), mode="bilinear", align_corners=False)[:, 0]
    flat = up.reshape(2, -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    expected = ((flat - low) / (high - low)).reshape(2, 20, 24).numpy()
    assert np.allclose(cams, expected, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_attention_maps_are_the_blocks_own() -> None:
    torch.manual_seed(1)
    vit = build_encoder("vit", embed_dim=16, depth=2, num_heads=4, patch_size=4, img_size=16,
                        num_register_tokens=2).eval()
    x = torch.randn(2, 3, 16, 16)
    seen = []
    handles = [b.attn.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in vit.blocks]
    with torch.no_grad():
        vit(x)
    for h in handles:
        h.remove()
    maps = attention_maps(vit, x)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 19, 19)] * 2           # 1 + 2 + 16 tokens
    for block, attn, (inp, out) in zip(vit.blocks, maps, seen):
        assert torch.allclose(attn.sum(-1), torch.ones(2, 4, 19), atol=1e-6)
        v = block.attn.qkv(inp)[..., 32:].reshape(2, 19, 4, 4).transpose(1, 2)   # (B, heads, T, d)
        mixed = (attn @ v).transpose(1, 2).reshape(2, 19, 16)
        assert torch.allclose(block.attn.proj(mixed), out, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_attention_rollout_equals_the_numpy_product_and_finds_the_planted_key(pooling: str) -> None:
    torch.manual_seed(2)
    vit = build_encoder("vit", embed_dim=16, depth=3, num_heads=2, patch_size=4, img_size=16,
                        num_register_tokens=1, pooling=pooling).eval()
    x = torch.randn(1, 3, 16, 16)
    heads = [m[0].mean(0).numpy().astype(np.float64) for m in attention_maps(vit, x)]
    rollout = np.eye(18)
    for a in heads:                                   # Abnar & Zuidema: A = 0.5 W + 0.5 I, rows sum to 1
        a = 0.5 * a + 0.5 * np.eye(18)
        rollout = (a / a.sum(1, keepdims=True)) @ rollout
    row = rollout[0] if pooling == "cls" else rollout[2:].mean(0)
    expected = row[2:].reshape(4, 4) / row[2:].max()
    grid = attention_rollout(vit, x, upsample=False)[0].numpy()
    assert grid.shape == (4, 4) and np.allclose(grid, expected, atol=1e-5)
    assert attention_rollout(vit, x).shape == (1, 16, 16)

    planted = attention_rollout(planted_vit(pooling, attend_to_planted=True), planted_image(), upsample=False)[0]
    assert tuple(np.unravel_index(int(planted.argmax()), (4, 4))) == PLANTED
    others = np.delete(planted.numpy().ravel(), PLANTED[0] * 4 + PLANTED[1])
    assert others.max() < 0.5


def test_rollout_gallery_of_a_saved_vit_classifier_and_refusal_for_convnets(tmp_path) -> None:
    from retinassl.data.cache import Cache
    from retinassl.data.manifest import Manifest
    from retinassl.data.preprocess import PreprocessConfig
    from retinassl.data.synthetic import generate_dataset
    from retinassl.errors import ConfigError
    from retinassl.explain.gradcam import classifier_cam_model, explanation_map, gradcam_gallery
    from retinassl.jobs.finetune import save_classifier
    from retinassl.methods.base import build_method
    from retinassl.metrics.tasks import TaskSpec

    generate_dataset(tmp_path / "data", n_images=3, size=40, seed=2)
    prepared = Cache(tmp_path / "cache").prepare(Manifest.load(tmp_path / "data" / "manifest.csv"),
                                                 PreprocessConfig(size=32, normalize="unit"))
    task = TaskSpec(name="referable", label="dr_grade", positive_from=2)
    torch.manual_seed(0)
    for arch, kwargs in (("vit", {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32}),
                         ("convnet", {"width": 4})):
        method = build_method("supervised", {"task": "binary"}, build_encoder(arch, **kwargs))
        save_classifier(tmp_path / arch, method, arch=arch, kwargs=kwargs, preprocess=prepared.config.model_dump(),
                        task=task)
    model, _ = classifier_cam_model(tmp_path / "vit")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rollout = explanation_map(model, x, "rollout")
    assert rollout.shape == (32, 32) and np.isclose(rollout.max(), 1.0)
    assert np.allclose(rollout, attention_rollout(model.encoder, x)[0].numpy())
    path = gradcam_gallery(tmp_path / "vit", prepared, [0, 1], tmp_path / "rollout.png", title="t", method="rollout")
    assert path.is_file() and path.stat().st_size > 1000
    convnet, _ = classifier_cam_model(tmp_path / "convnet")
    with pytest.raises(ConfigError, match="ViT"):
        explanation_map(convnet, x, "rollout")

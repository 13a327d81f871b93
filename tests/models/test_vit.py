"""ViT encoders: timm's key layout (published RETFound / DINOv2 / RETFound-Green / timm state dicts
load with no missing or unexpected key), outputs equal to an independent plain-PyTorch reference of
the published architecture on the same weights, position-embedding resampling, the encoder
interface, and errors that name the mismatch. Neither timm nor the published files are needed: the
state dicts are built here, key by key, from the published layouts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from retinassl.config import ModelConfig
from retinassl.errors import CheckpointError, ConfigError
from retinassl.models import build_encoder
from retinassl.models.initialize import load_weights_file
from retinassl.models.initialize import initial_encoder
from retinassl.models.vit import VisionTransformer
from retinassl.models.vit_blocks import resample_pos_embed
from retinassl.models.vit_weights import (KNOWN_WEIGHTS, describe_vit_state, load_vit_weights,
                                          map_vit_state_dict, weights_preprocess)

# --------------------------------------------------------------------------- published layouts


def timm_vit_layout(dim: int, depth: int, patch: int, grid: int, registers: int = 0, layer_scale: bool = False,
                    cls_pos: bool = True, in_chans: int = 3, mlp_ratio: int = 4) -> dict[str, tuple[int, ...]]:
    """Names and shapes of timm's ``VisionTransformer`` (global_pool='token', no classifier), written
    out from timm's module tree: tokens, patch embedding, blocks, final norm."""
    keys: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim)}
    if registers:
        keys["reg_token"] = (1, registers, dim)
    keys["pos_embed"] = (1, grid * grid + (1 + registers if cls_pos else 0), dim)
    keys["patch_embed.proj.weight"] = (dim, in_chans, patch, patch)
    keys["patch_embed.proj.bias"] = (dim,)
    hidden = dim * mlp_ratio
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                     b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                     b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,)})
        if layer_scale:
            keys[b + "ls1.gamma"] = (dim,)
        keys.update({b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                     b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                     b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,)})
        if layer_scale:
            keys[b + "ls2.gamma"] = (dim,)
    keys.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return keys


def mae_decoder_layout(dim: int, patch: int, grid: int, dec_dim: int = 512, dec_depth: int = 8) -> dict[str, tuple]:
    """The MAE pretraining checkpoint's extra keys (He et al.'s models_mae): mask token and decoder."""
    keys: dict[str, tuple[int, ...]] = {"mask_token": (1, 1, dec_dim), "decoder_embed.weight": (dec_dim, dim),
                                        "decoder_embed.bias": (dec_dim,),
                                        "decoder_pos_embed": (1, grid * grid + 1, dec_dim)}
    for i in range(dec_depth):
        for name, shape in timm_vit_layout(dec_dim, 1, patch, 1).items():
            if name.startswith("blocks.0."):
                keys[f"decoder_blocks.{i}." + name[len("blocks.0."):]] = shape
    keys.update({"decoder_norm.weight": (dec_dim,), "decoder_norm.bias": (dec_dim,),
                 "decoder_pred.weight": (patch * patch * 3, dec_dim), "decoder_pred.bias": (patch * patch * 3,)})
    return keys


def materialise(layout: dict[str, tuple[int, ...]], seed: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random values for a layout: LayerNorm weights near 1, layer-scale gammas ~0.1, others ~0.05."""
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in layout.items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in layout.items():
        v = torch.randn(shape, generator=g)
        if "norm" in k and k.endswith("weight"):
            v = 1 + 0.1 * v
        elif k.endswith("gamma"):
            v = 0.1 + 0.05 * v
        else:
            v = 0.05 * v if "pos_embed" not in k and "token" not in k else 0.5 * v
        state[k] = v
    return state


def assert_exact_fit(model: VisionTransformer, mapped: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert sorted(set(own) - set(mapped)) == [], "missing"
    assert sorted(set(mapped) - set(own)) == [], "unexpected"
    assert [k for k in own if tuple(own[k].shape) != tuple(mapped[k].shape)] == [], "mis-shaped"


# --------------------------------------------------------------------------- independent reference


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w + b


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference_tokens(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int, patch: int,
                     layout: str = "timm") -> tuple[torch.Tensor, int]:
    """The published forward, written from the papers' equations with explicit loops:
    patches by unfold + matmul, softmax attention, erf-GELU, pre-norm blocks, layer scale.

    ``layout="timm"``: timm's VisionTransformer (class token, then register tokens; the position
    embedding covers the class token unless it has only the patch positions).
    ``layout="dinov2"``: facebookresearch/dinov2 ``prepare_tokens_with_masks``: ``cat(cls, patches) +
    pos_embed``, then ``register_tokens`` inserted after the class token with no position.

    Returns ``(final-normed tokens (B, prefix + N, D), prefix)``.
    """
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    weight, bias = state["patch_embed.proj.weight"], state["patch_embed.proj.bias"]
    dim = weight.shape[0]
    cols = torch.nn.functional.unfold(x, kernel_size=patch, stride=patch)  # (B, C*p*p, N)
    t = (weight.reshape(dim, -1) @ cols).transpose(1, 2) + bias  # (B, N, D)
    cls = state["cls_token"].expand(b, -1, -1)
    if layout == "dinov2":
        t = torch.cat([cls, t], dim=1) + state["pos_embed"]
        regs = state.get("register_tokens")
        if regs is not None:
            t = torch.cat([t[:, :1], regs.expand(b, -1, -1), t[:, 1:]], dim=1)
        prefix = 1 + (0 if regs is None else regs.shape[1])
    else:
        regs = state.get("reg_token")
        prefix_tokens = [cls] + ([regs.expand(b, -1, -1)] if regs is not None else [])
        prefix = sum(p.shape[1] for p in prefix_tokens)
        pos = state["pos_embed"]
        if pos.shape[1] == gh * gw:
            t = torch.cat(prefix_tokens + [t + pos], dim=1)
        else:
            t = torch.cat(prefix_tokens + [t], dim=1) + pos
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hd = dim // heads
    for i in range(depth):
        p = lambda name: state[f"blocks.{i}.{name}"]  # noqa: E731
        y = _layer_norm(t, p("norm1.weight"), p("norm1.bias"))
        qkv = y @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv.split(dim, dim=-1)
        outs = []
        for hh in range(heads):
            sl = slice(hh * hd, (hh + 1) * hd)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
            outs.append(a @ v[..., sl])
        y = torch.cat(outs, dim=-1) @ p("attn.proj.weight").T + p("attn.proj.bias")
        if f"blocks.{i}.ls1.gamma" in state:
            y = y * p("ls1.gamma")
        t = t + y
        y = _layer_norm(t, p("norm2.weight"), p("norm2.bias"))
        y = _gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        if f"blocks.{i}.ls2.gamma" in state:
            y = y * p("ls2.gamma")
        t = t + y
    return _layer_norm(t, state["norm.weight"], state["norm.bias"]), prefix


# --------------------------------------------------------------------------- (a) key mapping, full size


def test_retfound_mae_vit_large_keys_map_exactly() -> None:
    """RETFound MAE: ViT-L/16 at 224 with MAE's decoder and mask token beside the encoder."""
    layout = timm_vit_layout(1024, 24, 16, 14) | mae_decoder_layout(1024, 16, 14)
    with torch.device("meta"):
        model = build_encoder("vit_large", **KNOWN_WEIGHTS["retfound-mae"].kwargs)
    mapped, report = map_vit_state_dict(materialise(layout, 0, "meta"), model)
    assert_exact_fit(model, mapped)
    assert "mask_token" in report.dropped and "decoder_pred.weight" in report.dropped
    assert len(report.dropped) == len(mae_decoder_layout(1024, 16, 14))


def test_retfound_green_vit_small_14_registers_layer_scale_keys_map_exactly() -> None:
    """RETFound-Green: timm vit_small_patch14_reg4_dinov2 at 392 px (28x28 grid, positions for the
    patches only)."""
    layout = timm_vit_layout(384, 12, 14, 28, registers=4, layer_scale=True, cls_pos=False)
    with torch.device("meta"):
        model = build_encoder("vit_small", **KNOWN_WEIGHTS["retfound-green"].kwargs)
    mapped, report = map_vit_state_dict(materialise(layout, 0, "meta"), model)
    assert_exact_fit(model, mapped)
    assert report.dropped == [] and report.resampled == []


def test_vit_base_16_timm_keys_map_exactly_and_head_dropped() -> None:
    layout = timm_vit_layout(768, 12, 16, 14) | {"head.weight": (1000, 768), "head.bias": (1000,)}
    with torch.device("meta"):
        model = build_encoder("vit_base")
    mapped, report = map_vit_state_dict(materialise(layout, 0, "meta"), model)
    assert_exact_fit(model, mapped)
    assert sorted(report.dropped) == ["head.bias", "head.weight"]


def test_retfound_dinov2_teacher_layout_maps_exactly() -> None:
    """RETFound-DINOv2 / DINOv2 training checkpoints: ``backbone.`` beside ``dino_head.`` and
    ``ibot_head.``, DINOv2's own names (``mask_token``), position grid 37x37 (518 px)."""
    layout = timm_vit_layout(1024, 24, 14, 37, layer_scale=True) | {"mask_token": (1, 1024)}
    state = {f"backbone.{k}": v for k, v in materialise(layout, 0, "meta").items()}
    state |= {"dino_head.mlp.0.weight": torch.empty(2048, 1024, device="meta"),
              "ibot_head.last_layer.weight_g": torch.empty(1, 256, device="meta")}
    with torch.device("meta"):
        model = build_encoder("vit_large", **KNOWN_WEIGHTS["retfound-dinov2"].kwargs)
    mapped, report = map_vit_state_dict(state, model)
    assert_exact_fit(model, mapped)
    assert report.stripped_prefixes == ["backbone."]
    assert {"dino_head.mlp.0.weight", "ibot_head.last_layer.weight_g", "mask_token"} <= set(report.dropped)
    assert report.resampled == ["pos_embed 37x37 -> 16x16 grid (bicubic)"]


# --------------------------------------------------------------------------- (b) outputs vs reference


def tiny(layout_kwargs: dict, seed: int) -> dict[str, torch.Tensor]:
    return materialise(timm_vit_layout(**layout_kwargs), seed)


@pytest.mark.parametrize("case", [
    # MAE / RETFound-like: class token with a position, no layer scale, mean pooling
    dict(layout=dict(dim=32, depth=2, patch=8, grid=4), kwargs=dict(patch_size=8, img_size=32, pooling="mean")),
    # RETFound-Green-like: patch 14, 4 registers, layer scale, patch-only positions
    dict(layout=dict(dim=32, depth=2, patch=14, grid=3, registers=4, layer_scale=True, cls_pos=False),
         kwargs=dict(patch_size=14, img_size=42, num_register_tokens=4, layer_scale=1e-5, pooling="mean")),
    # timm ViT with class-token pooling
    dict(layout=dict(dim=32, depth=3, patch=16, grid=2), kwargs=dict(patch_size=16, img_size=32, pooling="cls")),
])
def test_forward_matches_independent_reference(case: dict, tmp_path: Path) -> None:
    state = tiny(case["layout"], seed=1)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    model = build_encoder("vit", embed_dim=32, depth=case["layout"]["depth"], num_heads=4, **case["kwargs"]).eval()
    report = load_vit_weights(model, path)
    assert report.dropped == [] and report.resampled == []
    side = case["kwargs"]["img_size"]
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    ref, prefix = reference_tokens(state, x, heads=4, patch=case["kwargs"]["patch_size"])
    grid = side // case["kwargs"]["patch_size"]
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model(x)
    ref_map = ref[:, prefix:].transpose(1, 2).reshape(2, 32, grid, grid)
    ref_pooled = ref[:, 0] if case["kwargs"]["pooling"] == "cls" else ref[:, prefix:].mean(1)
    assert (fmap - ref_map).abs().max() < 1e-4
    assert (pooled - ref_pooled).abs().max() < 1e-4


def test_dinov2_raw_layout_with_registers_matches_dinov2_forward(tmp_path: Path) -> None:
    """facebookresearch/dinov2 files (``register_tokens``, the class token's position inside
    ``pos_embed``, ``mask_token``) converted as timm does give DINOv2's own forward."""
    layout = timm_vit_layout(32, 2, 14, 3, layer_scale=True, cls_pos=False)
    state = materialise(layout, 3)
    state["pos_embed"] = 0.5 * torch.randn(1, 1 + 9, 32, generator=torch.Generator().manual_seed(4))
    state["register_tokens"] = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(5))
    state["mask_token"] = torch.zeros(1, 32)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "dinov2.pth")
    model = build_encoder("vit", embed_dim=32, depth=2, num_heads=4, patch_size=14, img_size=42,
                          num_register_tokens=4, layer_scale=1.0).eval()
    report = load_vit_weights(model, tmp_path / "dinov2.pth", allow_pickle=True)
    assert report.nested == "teacher" and "register_tokens -> reg_token" in report.converted
    x = torch.randn(1, 3, 42, 42, generator=torch.Generator().manual_seed(6))
    ref, prefix = reference_tokens(state, x, heads=4, patch=14, layout="dinov2")
    with torch.no_grad():
        tokens, _ = model.tokens(x)
        ours = model.norm(tokens)
    assert prefix == 5
    assert (ours - ref).abs().max() < 1e-4


def test_mae_pth_with_model_entry_and_args_needs_allow_pickle(tmp_path: Path) -> None:
    """RETFound/MAE ``.pth``: weights under ``model`` beside ``optimizer``, ``epoch`` and an
    ``argparse.Namespace``; refused without allow_pickle, loaded through the external-weights path
    with it (decoder dropped)."""
    layout = timm_vit_layout(32, 2, 8, 4) | mae_decoder_layout(32, 8, 4, dec_dim=16, dec_depth=1)
    state = materialise(layout, 7)
    path = tmp_path / "RETFound_mae.pth"
    torch.save({"model": state, "optimizer": {"state": {}}, "epoch": 799,
                "args": argparse.Namespace(model="vit_large_patch16", input_size=224)}, path)
    cfg = ModelConfig(arch="vit", kwargs=dict(embed_dim=32, depth=2, num_heads=4, patch_size=8, img_size=32,
                                             pooling="mean"), init=str(path))
    with pytest.raises(CheckpointError, match="allow-pickle"):
        initial_encoder(cfg)
    built = initial_encoder(cfg.model_copy(update={"allow_pickle": True}))
    own = built.encoder.state_dict()
    assert torch.equal(own["blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"])
    assert built.kind == "external"


# --------------------------------------------------------------------------- (c) position embeddings


def test_pos_embed_resampling_identity_at_native_size_and_finite_elsewhere() -> None:
    pos = torch.randn(1, 1 + 16, 8, generator=torch.Generator().manual_seed(0))
    assert resample_pos_embed(pos, (4, 4), num_prefix_tokens=1) is pos
    out = resample_pos_embed(pos, (6, 3), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 18, 8) and torch.isfinite(out).all()
    assert torch.equal(out[:, 0], pos[:, 0])  # class position untouched
    # a constant embedding stays constant (bicubic weights sum to 1)
    const = torch.full((1, 16, 8), 0.3)
    assert torch.allclose(resample_pos_embed(const, (7, 7)), torch.full((1, 49, 8), 0.3), atol=1e-5)


def test_model_at_other_input_sizes() -> None:
    model = build_encoder("vit", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32,
                          num_register_tokens=2, layer_scale=1e-5).eval()
    with torch.no_grad():
        native = model.forward_features(torch.ones(1, 3, 32, 32))
        manual = model._pos_embed((4, 4))
        other = model.forward_features(torch.ones(1, 3, 48, 64))
    assert torch.equal(manual, model.pos_embed)  # the native grid uses the stored embedding as is
    assert native.shape == (1, 32, 4, 4)
    assert other.shape == (1, 32, 6, 8) and torch.isfinite(other).all()


def test_checkpoint_pos_embed_of_another_grid_is_resampled(tmp_path: Path) -> None:
    state = tiny(dict(dim=32, depth=1, patch=8, grid=6), seed=8)  # trained at 48 px
    save_file(state, str(tmp_path / "w.safetensors"))
    model = build_encoder("vit", embed_dim=32, depth=1, num_heads=2, patch_size=8, img_size=32)
    report = load_vit_weights(model, tmp_path / "w.safetensors")
    assert report.resampled == ["pos_embed 6x6 -> 4x4 grid (bicubic)"]
    expected = resample_pos_embed(state["pos_embed"], (4, 4), (6, 6), num_prefix_tokens=1)
    assert torch.equal(model.pos_embed.detach(), expected)


# --------------------------------------------------------------------------- (d) encoder interface


def test_encoder_interface_shapes_registry_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_encoder("vit", embed_dim=32, depth=3, num_heads=2, patch_size=8, img_size=32, pooling="mean",
                          drop_path=0.1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert model.num_features == 32
    assert model.forward_features(x).shape == (2, 32, 4, 4)
    assert model(x).shape == (2, 32)
    pyramid = model.forward_pyramid(x)
    assert [tuple(p.shape) for p in pyramid] == [(2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 4, 4)]
    assert model.reductions == (4, 8, 8) and model.feature_channels == (32, 32, 32)
    (model(x).sum() + sum(p.mean() for p in pyramid)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in ("vit_tiny", "vit_small", "vit_base", "vit_large"):
        with torch.device("meta"):
            enc = build_encoder(name, patch_size=14, img_size=28)
        assert isinstance(enc, VisionTransformer)
    with pytest.raises(ConfigError):
        build_encoder("vit_small", embed_dim=12)


def test_unet_decoder_over_a_vit() -> None:
    from retinassl.models.segmentation import UNet

    torch.manual_seed(0)
    model = UNet(build_encoder("vit", embed_dim=16, depth=3, num_heads=2, patch_size=8, img_size=32), 1)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_fc_norm_variant_pools_then_normalises() -> None:
    torch.manual_seed(0)
    model = build_encoder("vit", embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=16,
                          pooling="mean", fc_norm=True).eval()
    assert "fc_norm.weight" in model.state_dict() and "norm.weight" not in model.state_dict()
    x = torch.rand(1, 3, 16, 16)
    tokens, _ = model.tokens(x)
    mean = tokens[:, 1:].mean(1)
    expected = torch.nn.functional.layer_norm(mean, (16,), model.fc_norm.weight, model.fc_norm.bias, 1e-6)
    assert torch.allclose(model(x), expected, atol=1e-6)


# --------------------------------------------------------------------------- errors and metadata


def test_mismatch_names_keys_and_the_architecture_that_fits(tmp_path: Path) -> None:
    state = tiny(dict(dim=32, depth=2, patch=14, grid=3, registers=4, layer_scale=True, cls_pos=False), 9)
    save_file(state, str(tmp_path / "green.safetensors"))
    model = build_encoder("vit", embed_dim=32, depth=2, num_heads=2, patch_size=14, img_size=42)
    with pytest.raises(CheckpointError) as err:
        load_weights_file(model, tmp_path / "green.safetensors")
    msg = str(err.value)
    assert "green.safetensors" in msg and "unexpected" in msg and "reg_token" in msg and "ls1.gamma" in msg
    assert "4 register tokens" in msg and "'num_register_tokens': 4" in msg


def test_describe_names_the_published_size() -> None:
    words, fit = describe_vit_state(materialise(timm_vit_layout(1024, 24, 16, 14), 0, "meta"))
    assert fit == {"arch": "vit_large", "kwargs": {"patch_size": 16, "img_size": 224}}
    assert "1024 wide, 24 blocks, patch 16" in words


def test_swiglu_refused_and_preprocess_table() -> None:
    state = tiny(dict(dim=16, depth=1, patch=8, grid=2), 0)
    state["blocks.0.mlp.w12.weight"] = state.pop("blocks.0.mlp.fc1.weight")
    model = build_encoder("vit", embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=16)
    with pytest.raises(CheckpointError, match="SwiGLU"):
        map_vit_state_dict(state, model)
    green = weights_preprocess("retfound-green")
    assert green == {"weights": "retfound-green", "size": 392, "mean": [0.5] * 3, "std": [0.5] * 3,
                     "normalize": "meanstd"}
    assert weights_preprocess("retfound-mae")["normalize"] == "imagenet"
    with pytest.raises(CheckpointError, match="known"):
        weights_preprocess("nope")


# --------------------------------------------------------------------------- timm's own outputs


def _timm_reference_module():
    import importlib.util

    path = Path(__file__).parent / "fixtures" / "make_timm_vit_reference.py"
    spec = importlib.util.spec_from_file_location("make_timm_vit_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["reg4_ls_patch14", "reg4_ls_patch14_resampled", "cls_patch16",
                                  "cls_patch16_resampled", "fc_norm_avg"])
def test_outputs_match_timm_on_the_same_weights(case: str) -> None:
    """timm 1.0.31's VisionTransformer outputs (fixture made by fixtures/make_timm_vit_reference.py):
    same parameter names, same patch tokens and pooled embedding, also at an input size that makes
    both resample the position embedding."""
    import json

    ref_module = _timm_reference_module()
    ref = json.loads(ref_module.FIXTURE.read_text())["cases"][case]
    model = build_encoder("vit", **ref["ours"]).eval()
    assert sorted(model.state_dict()) == ref["keys"]
    state = ref_module.fill_state({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                  seed=ref["weights_seed"])
    assert ref_module.checksum(state) == pytest.approx(ref["weights_checksum"], rel=1e-9)
    model.load_state_dict(state)
    x = ref_module.case_input(ref["side"], seed=ref["input_seed"])
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model(x)
    tokens = fmap.flatten(2).transpose(1, 2)  # (B, N, D), row-major over the patch grid like timm
    assert (tokens - torch.tensor(ref["patch_tokens"])).abs().max() < 1e-4
    assert (pooled - torch.tensor(ref["pooled"])).abs().max() < 1e-4


def test_dinov2_chunked_blocks_are_unchunked() -> None:
    """DINOv2 training checkpoints with block chunks (``blocks.<chunk>.<i>.``, global ``i``)."""
    state = tiny(dict(dim=16, depth=4, patch=8, grid=2, layer_scale=True), 11)
    chunked = {(f"blocks.{int(k.split('.')[1]) // 2}.{k.split('.', 1)[1]}" if k.startswith("blocks.") else k): v
               for k, v in state.items()}
    assert "blocks.1.3.ls2.gamma" in chunked
    model = build_encoder("vit", embed_dim=16, depth=4, num_heads=2, patch_size=8, img_size=16, layer_scale=1.0)
    mapped, report = map_vit_state_dict(chunked, model)
    assert_exact_fit(model, mapped)
    assert all(torch.equal(mapped[k], v) for k, v in state.items())
    assert report.converted == ["unchunked DINOv2 blocks (blocks.<chunk>.<i> -> blocks.<i>)"]

"""Published ViT weights (RETFound, RETFound-DINOv2, DINOv2, RETFound-Green, timm) onto
:class:`~retinassl.models.vit.VisionTransformer`, whose parameter names are timm's.

What a file may hold and what mapping does with it:

- the weights may be nested: a torch file's ``model`` (MAE, RETFound-MAE), ``teacher`` (DINOv2
  training checkpoints, RETFound-DINOv2; preferred over ``student``) or ``state_dict`` entry; other
  entries (``optimizer``, ``epoch``, ``args``...) are ignored. A saved ``argparse.Namespace`` (MAE's
  ``args``) is allowed by the weights-only unpickler, nothing else beyond tensors and containers;
- prefixes: ``module.``/``model.``/``_orig_mod.`` shared by every key are stripped; when the ViT sits
  under a prefix beside other modules (``backbone.`` beside DINO's ``dino_head.``/``ibot_head.``,
  ``encoder.``...), the keys under the prefix of ``patch_embed.proj.weight`` are kept, or exactly
  those under an explicit ``prefix``;
- dropped: MAE's decoder (``decoder_*``) and ``mask_token``, classifier heads (``head.*``);
- DINOv2's own layout (facebookresearch/dinov2) is converted as timm does: ``register_tokens`` ->
  ``reg_token`` and, for register models (timm's ``no_embed_class``), the class token's position
  embedding is added to ``cls_token`` and dropped from ``pos_embed``; chunked blocks
  (``blocks.<chunk>.<i>.``) become ``blocks.<i>.``. DINOv2's SwiGLU MLP (ViT-g, ``mlp.w12``) is refused;
- ``pos_embed`` stored for another grid (DINOv2's 37x37 at 518 px, a 384 px fine-tune...) is
  resampled bicubically to the encoder's ``img_size // patch_size`` grid
  (:func:`retinassl.models.vit_blocks.resample_pos_embed`; class/register positions kept);
- the patch embedding is adapted to the encoder's input channels as timm's ``adapt_input_conv``.

Anything else that does not fit raises :class:`~retinassl.errors.CheckpointError` naming the
missing, unexpected and mis-shaped keys and describing the architecture the file holds (width,
depth, patch, registers, layer scale) with the encoder arguments that would fit it.

The encoder must be built with the right architecture before loading (``model.arch`` and
``model.kwargs``); :data:`KNOWN_WEIGHTS` lists the published models with those arguments and the
input normalisation and size each expects (:func:`weights_preprocess` gives them in the form to
record beside the encoder).
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retinassl.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from retinassl.errors import CheckpointError
from retinassl.io.saved_model import load_state_strict, read_safetensors, read_torch_file
from retinassl.models.external import MappingReport, adapt_input_conv, unwrap_state_dict
from retinassl.models.vit import VIT_SIZES, VisionTransformer
from retinassl.models.vit_blocks import resample_pos_embed

log = logging.getLogger(__name__)

HALF = (0.5, 0.5, 0.5)

#: entries of a torch checkpoint that hold the weights, in order of preference
NESTED_KEYS: tuple[str, ...] = ("model", "teacher", "state_dict", "model_state_dict", "student")
ANCHOR = "patch_embed.proj.weight"
DROPPED_PREFIXES: tuple[str, ...] = ("decoder_", "head.", "dino_head.", "ibot_head.")
DROPPED_KEYS: tuple[str, ...] = ("mask_token", "head.weight", "head.bias")


@dataclass(frozen=True)
class KnownWeights:
    """A published ViT: how to build the encoder for it and what input it expects.

    Attributes:
        arch, kwargs: ``build_encoder(arch, **kwargs)`` fits the file.
        mean, std: per-channel normalisation of ``[0, 1]`` RGB inputs.
        size: the square input side (pixels) the model was trained and evaluated at.
        normalize: the matching :class:`~retinassl.data.preprocess.PreprocessConfig` ``normalize``
            mode: ``imagenet``, or ``meanstd`` (with ``mean``/``std`` as ``normalize_mean`` and
            ``normalize_std``; :func:`retinassl.models.published.published_preprocess`).
        reference: paper and where the file comes from.
    """

    arch: str
    kwargs: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    normalize: str | None
    reference: str


KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "retfound-mae": KnownWeights(
        "vit_large", {"patch_size": 16, "img_size": 224, "pooling": "mean"}, IMAGENET_MEAN, IMAGENET_STD, 224,
        "imagenet", "Zhou et al. 2023 (Nature); RETFound_mae_* .pth ('model' entry, MAE decoder included)"),
    "retfound-dinov2": KnownWeights(
        "vit_large", {"patch_size": 14, "img_size": 224, "layer_scale": 1e-5, "pooling": "mean"},
        IMAGENET_MEAN, IMAGENET_STD, 224, "imagenet",
        "RETFound-DINOv2 (Zhou et al. 2025); RETFound_dinov2_* .pth ('teacher' entry, 'backbone.' prefix)"),
    "retfound-green": KnownWeights(
        "vit_small", {"patch_size": 14, "img_size": 392, "num_register_tokens": 4, "layer_scale": 1e-5,
                      "pooling": "mean"}, HALF, HALF, 392, "meanstd",
        "Engelmann & Bernabeu 2025 (Nat Commun); retfoundgreen_statedict.pth (timm "
        "vit_small_patch14_reg4_dinov2 at 392 px, used with global_pool='avg', mean = std = 0.5)"),
    "dinov2-vits14": KnownWeights(
        "vit_small", {"patch_size": 14, "img_size": 224, "layer_scale": 1e-5}, IMAGENET_MEAN, IMAGENET_STD,
        224, "imagenet", "Oquab et al. 2024; dinov2_vits14_pretrain.pth (pos_embed 37x37, resampled)"),
    "dinov2-vitb14": KnownWeights(
        "vit_base", {"patch_size": 14, "img_size": 224, "layer_scale": 1e-5}, IMAGENET_MEAN, IMAGENET_STD,
        224, "imagenet", "Oquab et al. 2024; dinov2_vitb14_pretrain.pth"),
    "dinov2-vitl14": KnownWeights(
        "vit_large", {"patch_size": 14, "img_size": 224, "layer_scale": 1e-5}, IMAGENET_MEAN, IMAGENET_STD,
        224, "imagenet", "Oquab et al. 2024; dinov2_vitl14_pretrain.pth"),
    "dinov2-vits14-reg": KnownWeights(
        "vit_small", {"patch_size": 14, "img_size": 224, "layer_scale": 1e-5, "num_register_tokens": 4},
        IMAGENET_MEAN, IMAGENET_STD, 224, "imagenet", "Darcet et al. 2024; dinov2_vits14_reg4_pretrain.pth"),
    "dinov2-vitb14-reg": KnownWeights(
        "vit_base", {"patch_size": 14, "img_size": 224, "layer_scale": 1e-5, "num_register_tokens": 4},
        IMAGENET_MEAN, IMAGENET_STD, 224, "imagenet", "Darcet et al. 2024; dinov2_vitb14_reg4_pretrain.pth"),
    "dinov2-vitl14-reg": KnownWeights(
        "vit_large", {"patch_size": 14, "img_size": 224, "layer_scale": 1e-5, "num_register_tokens": 4},
        IMAGENET_MEAN, IMAGENET_STD, 224, "imagenet", "Darcet et al. 2024; dinov2_vitl14_reg4_pretrain.pth"),
    "mae-vit-base": KnownWeights(
        "vit_base", {"patch_size": 16, "img_size": 224, "pooling": "mean"}, IMAGENET_MEAN, IMAGENET_STD, 224,
        "imagenet", "He et al. 2022; mae_pretrain_vit_base.pth ('model' entry)"),
    "mae-vit-large": KnownWeights(
        "vit_large", {"patch_size": 16, "img_size": 224, "pooling": "mean"}, IMAGENET_MEAN, IMAGENET_STD, 224,
        "imagenet", "He et al. 2022; mae_pretrain_vit_large.pth ('model' entry)"),
}


def weights_preprocess(name: str) -> dict[str, Any]:
    """What the inputs of a :data:`KNOWN_WEIGHTS` model must look like, for the encoder's JSON:
    ``{"weights": name, "size", "mean", "std", "normalize"}``.

    Raises:
        CheckpointError: unknown name (the known ones are listed).
    """
    if name not in KNOWN_WEIGHTS:
        raise CheckpointError(f"unknown published ViT weights {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}")
    known = KNOWN_WEIGHTS[name]
    return {"weights": name, "size": known.size, "mean": list(known.mean), "std": list(known.std),
            "normalize": known.normalize}


@dataclass
class VitMappingReport(MappingReport):
    """What :func:`map_vit_state_dict` changed (beside :class:`MappingReport`'s fields)."""

    nested: str | None = None
    converted: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [] if self.nested is None else [f"took the {self.nested!r} entry"]
        base = super().summary()
        if base != "no changes":
            parts.append(base.replace("classifier keys", "keys (decoder, heads, mask token)"))
        parts += self.converted + self.resampled
        return "; ".join(parts) or "no changes"


def read_vit_checkpoint(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str | None]:
    """Flat weights from a safetensors file or (only with ``allow_pickle``) a torch file read with
    ``weights_only=True``, taken from a nested ``model``/``teacher``/``state_dict`` entry if needed.

    Returns:
        ``(state, nested)``: ``nested`` is the entry the weights came from, or None.

    Raises:
        CheckpointError: missing or unreadable file, pickle without ``allow_pickle``, or no flat
            dict of tensors inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors(path), None
    obj = read_torch_file(path, allow_pickle, safe_globals=[argparse.Namespace])  # MAE files hold their args
    nested = None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                obj, nested = obj[key], key
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        entries = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: does not contain a flat state dict of tensors (nor one under "
                              f"{'/'.join(NESTED_KEYS)}); found: {entries}")
    return obj, nested


def describe_vit_state(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """The architecture a timm-layout ViT state dict holds, in words and as encoder arguments.

    Returns:
        ``(description, {"arch": ..., "kwargs": {...}})``; the arch is a named size when the width
        and depth are one (heads cannot be read from weights: the named sizes fix them), else ``vit``
        with ``num_heads`` guessed as ``width / 64``.
    """
    if ANCHOR not in state:
        return "not a ViT (no patch_embed.proj.weight)", {}
    proj = state[ANCHOR]
    dim, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    layer_scale = "blocks.0.ls1.gamma" in state
    class_token = "cls_token" in state
    prefix = int(class_token) + registers
    kwargs: dict[str, Any] = {"patch_size": patch}
    grid_desc = "no pos_embed"
    if "pos_embed" in state:
        n = int(state["pos_embed"].shape[1])
        # timm's register models keep positions for the patches only; others for the class token too
        for pre in ((0, prefix, int(class_token)) if registers else (prefix, 0)):
            side = int(round(max(n - pre, 0) ** 0.5))
            if n - pre > 0 and side * side == n - pre:
                kwargs["img_size"] = side * patch
                grid_desc = f"position grid {side}x{side} ({side * patch} px)"
                if (pre == 0) != bool(registers):
                    kwargs["no_embed_class"] = pre == 0
                break
    if in_channels != 3:
        kwargs["in_channels"] = in_channels
    if registers:
        kwargs["num_register_tokens"] = registers
    if layer_scale:
        kwargs["layer_scale"] = 1e-5
    if not class_token:
        kwargs.update(class_token=False, pooling="mean")
    if "fc_norm.weight" in state and "norm.weight" not in state:
        kwargs.update(fc_norm=True, pooling="mean")
    if "blocks.0.attn.qkv.bias" not in state and depth:
        kwargs["qkv_bias"] = False
    arch = next((name for name, (d, n, _) in VIT_SIZES.items() if (d, n) == (dim, depth)), "vit")
    if arch == "vit":
        hidden = state.get("blocks.0.mlp.fc1.weight")
        kwargs = {"embed_dim": dim, "depth": depth, "num_heads": max(1, dim // 64),
                  **({"mlp_ratio": hidden.shape[0] / dim} if hidden is not None else {}), **kwargs}
    words = (f"a ViT {dim} wide, {depth} blocks, patch {patch}, {in_channels} input channels, "
             f"{registers} register tokens, {'with' if layer_scale else 'no'} layer scale, "
             f"{'a' if class_token else 'no'} class token, {grid_desc}")
    return words, {"arch": arch, "kwargs": kwargs}


def _find_vit_prefix(state: dict[str, torch.Tensor]) -> str | None:
    """The prefix under which a ViT sits (``backbone.``...): that of the ``patch_embed.proj.weight`` key."""
    hits = [k[: -len(ANCHOR)] for k in state if k.endswith(ANCHOR)]
    return hits[0] if len(hits) == 1 else None


def _convert_dinov2(state: dict[str, torch.Tensor], model: VisionTransformer,
                    report: VitMappingReport, source: object) -> dict[str, torch.Tensor]:
    """facebookresearch/dinov2 layout -> timm layout (see the module docstring)."""
    if any(".mlp.w12." in k or ".mlp.w3." in k for k in state):
        raise CheckpointError(f"{source}: the weights use DINOv2's SwiGLU MLP (keys 'mlp.w12'/'mlp.w3', "
                              f"ViT-g); only the plain GELU MLP is supported")
    chunked = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
    if any(chunked.match(k) for k in state):
        state = {chunked.sub(r"blocks.\2.", k): v for k, v in state.items()}
        report.converted.append("unchunked DINOv2 blocks (blocks.<chunk>.<i> -> blocks.<i>)")
    if "register_tokens" in state:
        state = dict(state)
        state["reg_token"] = state.pop("register_tokens")
        report.converted.append("register_tokens -> reg_token")
        pos = state.get("pos_embed")
        if model.no_embed_class and pos is not None and "cls_token" in state \
                and pos.shape[1] - 1 == _square(pos.shape[1] - 1):
            state["cls_token"] = state["cls_token"] + pos[:, :1]
            state["pos_embed"] = pos[:, 1:]
            report.converted.append("class-token position folded into cls_token (timm's no_embed_class)")
    return state


def _square(n: int) -> int:
    side = int(round(max(n, 0) ** 0.5))
    return side * side


def map_vit_state_dict(state: dict[str, torch.Tensor], model: VisionTransformer, prefix: str | None = None,
                       source: object = "state dict",
                       report: VitMappingReport | None = None) -> tuple[dict[str, torch.Tensor], VitMappingReport]:
    """Map a published ViT state dict onto ``model``'s keys (see the module docstring).

    Args:
        state: flat ``name -> tensor`` weights (already taken out of any ``model``/``teacher`` entry).
        model: the ViT encoder the weights are meant for.
        prefix: keep only keys under this prefix (and strip it) instead of finding the ViT's prefix.
        source: what to name in error messages (the file).

    Returns:
        ``(mapped state, report)``; the mapped state may still not fit (:func:`load_vit_state` checks).

    Raises:
        CheckpointError: empty state, nothing under ``prefix``, or a SwiGLU (ViT-g) MLP.
    """
    report = report or VitMappingReport()
    state = unwrap_state_dict(state, prefix, source, report)
    if ANCHOR not in state:
        found = _find_vit_prefix(state)
        if found:
            others = sorted(k for k in state if not k.startswith(found))
            state = {k[len(found):]: v for k, v in state.items() if k.startswith(found)}
            report.stripped_prefixes.append(found)
            report.dropped.extend(others)
    state = _convert_dinov2(state, model, report, source)

    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own and (key in DROPPED_KEYS or key.startswith(DROPPED_PREFIXES)):
            report.dropped.append(key)
            continue
        mapped[key] = value

    if "pos_embed" in mapped and "pos_embed" in own and mapped["pos_embed"].shape != own["pos_embed"].shape:
        theirs, ours = mapped["pos_embed"], own["pos_embed"]
        ours_prefix = ours.shape[1] - model.grid[0] * model.grid[1]
        theirs_grid = theirs.shape[1] - ours_prefix
        if theirs.ndim == 3 and theirs.shape[2] == ours.shape[2] and theirs_grid > 0 \
                and _square(theirs_grid) == theirs_grid:
            side = int(round(theirs_grid ** 0.5))
            mapped["pos_embed"] = resample_pos_embed(theirs, model.grid, (side, side), num_prefix_tokens=ours_prefix)
            report.resampled.append(f"pos_embed {side}x{side} -> {model.grid[0]}x{model.grid[1]} grid (bicubic)")
    if ANCHOR in mapped and ANCHOR in own:
        theirs, ours = mapped[ANCHOR], own[ANCHOR]
        if theirs.ndim == 4 and theirs.shape[1] != ours.shape[1] and theirs.shape[0] == ours.shape[0] \
                and theirs.shape[2:] == ours.shape[2:]:
            mapped[ANCHOR] = adapt_input_conv(theirs, ours.shape[1])
            report.adapted.append(f"{ANCHOR} {tuple(theirs.shape)} -> {tuple(ours.shape)}")
    return mapped, report


def _patterns(keys: list[str], limit: int = 6) -> str:
    """Keys with block indices folded (``blocks.N.ls1.gamma``), at most ``limit`` of them."""
    folded = list(dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.N.", k) for k in keys))
    more = f", ... {len(folded) - limit} more" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


def load_vit_state(model: VisionTransformer, state: dict[str, torch.Tensor], source: object) -> None:
    """Load a mapped state into ``model`` exactly, or raise a CheckpointError naming the missing,
    unexpected and mis-shaped keys and the architecture the weights describe."""
    def hint() -> str:
        words, fit = describe_vit_state(state)
        return f"; the file holds {words}" + (f"; it would fit arch={fit['arch']} with kwargs {fit['kwargs']}"
                                              if fit else "")

    load_state_strict(model, state, source, name_keys=_patterns, hint=hint,
                      what=f"the {type(model).__name__} ({model.num_features} wide, {len(model.blocks)} "
                           f"blocks, patch {model.patch_size})")


def load_vit_weights(model: VisionTransformer, path: str | Path, allow_pickle: bool = False,
                     prefix: str | None = None) -> VitMappingReport:
    """Read a published ViT weights file, map it (:func:`map_vit_state_dict`) and load it into
    ``model`` exactly (every parameter must be set).

    Raises:
        CheckpointError: unreadable or pickle-based file (without ``allow_pickle``), or weights that
            do not fit (keys named, with the arguments that would fit).
    """
    state, nested = read_vit_checkpoint(path, allow_pickle=allow_pickle)
    report = VitMappingReport(nested=nested)
    mapped, report = map_vit_state_dict(state, model, prefix=prefix, source=path, report=report)
    load_vit_state(model, mapped, source=path)
    log.info("loaded ViT weights %s (%s)", path, report.summary())
    return report

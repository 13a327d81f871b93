"""Transfer recipes for ViT encoders: layer-wise learning-rate decay and the pooled embedding.

Layer-wise learning-rate decay (LLRD) is how BEiT, MAE and RETFound fine-tune a pretrained ViT.
Bao et al. 2022 (BEiT): "we use layer-wise learning rate decay ... the learning rate of the l-th layer
is lr * decay^(L - l)"; He et al. 2022 (MAE, appendix A.2) fine-tune with "layer-wise lr decay
0.75 (ViT-B) / 0.65 (ViT-L)", and RETFound's ``main_finetune.py`` uses ``--layer_decay 0.65``.
The layer ids follow MAE's ``util/lr_decay.py`` (``get_layer_id_for_vit``): with ``L = depth + 1``,
the class/register tokens, position embedding and patch embedding are layer 0 (lr * decay^L), block
``i`` is layer ``i + 1`` (lr * decay^(depth - i)), everything after the blocks (final norm,
``fc_norm``, a head) is layer ``L`` (the full lr). As in MAE's ``param_groups_lrd``, one-dimensional
parameters (biases, LayerNorm and layer-scale weights) and the tokens and position embedding
(:meth:`~retinassl.models.vit.VisionTransformer.no_weight_decay`) get no weight decay.

:func:`set_pooling` switches the pooled embedding of a ViT (``forward``) between the class token and
the mean of the patch tokens, e.g. for linear probing a checkpoint saved with the other pooling.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from retinassl.errors import ConfigError
from retinassl.models.vit import VisionTransformer

#: names of the ViT parameters that make layer 0 (before the first block)
EMBEDDING_PREFIXES: tuple[str, ...] = ("cls_token", "reg_token", "pos_embed", "patch_embed.")


def vit_layer_id(name: str, depth: int) -> int:
    """MAE's layer id of a ViT parameter (``name`` as in the encoder's ``named_parameters``):
    0 for the embeddings and tokens, ``i + 1`` for ``blocks.i.*``, ``depth + 1`` for the rest."""
    if name.startswith(EMBEDDING_PREFIXES):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(encoder: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                       others: Iterable[nn.Parameter] = ()) -> list[dict]:
    """Optimizer parameter groups with layer-wise learning-rate decay (see the module docstring).

    Args:
        encoder: a :class:`~retinassl.models.vit.VisionTransformer`.
        lr: the learning rate of the top layer (and of ``others``).
        weight_decay: weight decay of the matrices; one-dimensional parameters, tokens and the
            position embedding get 0.
        layer_decay: the decay per layer, in (0, 1]; 1 gives every layer ``lr``.
        others: parameters trained with the top layer's settings (a head), weight decay as above
            by dimension.

    Returns:
        groups ``{"params", "lr", "weight_decay", "layer_id"}`` for ``torch.optim.AdamW``, in layer
        order; only parameters that require gradients, each exactly once.

    Raises:
        ConfigError: ``encoder`` is not a ViT, or ``layer_decay`` is outside (0, 1].
    """
    if not isinstance(encoder, VisionTransformer):
        raise ConfigError(f"layer_decay needs a ViT encoder (vit, vit_tiny/small/base/large), got "
                          f"{type(encoder).__name__}; leave layer_decay unset for other encoders")
    if not 0 < layer_decay <= 1:
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = len(encoder.blocks)
    exempt = encoder.no_weight_decay()
    groups: dict[tuple[int, bool], dict] = {}

    def add(param: nn.Parameter, layer: int, no_decay: bool) -> None:
        group = groups.setdefault((layer, no_decay), {
            "params": [], "lr": lr * layer_decay ** (depth + 1 - layer),
            "weight_decay": 0.0 if no_decay else weight_decay, "layer_id": layer})
        group["params"].append(param)

    seen: set[int] = set()
    for name, param in encoder.named_parameters():
        if param.requires_grad:
            seen.add(id(param))
            add(param, vit_layer_id(name, depth), param.ndim <= 1 or name in exempt)
    for param in others:
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            add(param, depth + 1, param.ndim <= 1)
    return [groups[key] for key in sorted(groups)]


def set_pooling(encoder: nn.Module, pooling: str) -> nn.Module:
    """Make a ViT's pooled embedding the class token (``"cls"``) or the mean of its patch tokens
    (``"mean"``); ``"encoder"`` leaves the encoder as built. Returns ``encoder`` (changed in place).

    Raises:
        ConfigError: a pooling other than ``encoder`` for a non-ViT encoder, ``cls`` for a ViT
            without a class token, or an unknown pooling.
    """
    if pooling == "encoder":
        return encoder
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"pooling must be 'encoder', 'cls' or 'mean', got {pooling!r}")
    if not isinstance(encoder, VisionTransformer):
        raise ConfigError(f"pooling {pooling!r} applies to ViT encoders; a {type(encoder).__name__} "
                          f"always pools its feature map by its global average (use pooling 'encoder')")
    if pooling == "cls" and encoder.cls_token is None:
        raise ConfigError("pooling 'cls' needs a ViT with a class token (this one has none)")
    encoder.pooling = pooling  # type: ignore[assignment]
    return encoder


def pooling_of(encoder: nn.Module) -> str:
    """How ``encoder`` pools (for cache keys): a ViT's ``cls``/``mean``, else ``mean`` (global average)."""
    return str(getattr(encoder, "pooling", "mean")) if isinstance(encoder, VisionTransformer) else "mean"


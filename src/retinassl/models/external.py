"""Weights made elsewhere (torchvision or timm ImageNet ResNets, other people's checkpoints) mapped
onto our encoders without needing either package.

Our ResNet encoders use torchvision's parameter names (:mod:`retinassl.models.resnet`), and timm's
``resnet18/34/50`` use the same names, so mapping a state dict means:

- unwrap it: strip a ``module.`` (DataParallel/DDP), ``model.`` (Lightning and many training
  scripts) or ``_orig_mod.`` (``torch.compile``) prefix shared by every key, repeatedly; or take
  the keys under an explicit ``prefix`` (e.g. ``module.encoder_q.`` of a MoCo checkpoint);
- drop the classifier: ``fc.*`` (torchvision, timm), ``head.*`` / ``head.fc.*`` (timm's newer
  heads), ``classifier.*``, ``last_linear.*`` (Cadene's pretrainedmodels);
- fill BatchNorm ``num_batches_tracked`` counters that old torchvision files lack (they do not
  affect the outputs);
- adapt the first convolution to the encoder's input channels the way timm does
  (``adapt_input_conv``): for 1 channel sum the RGB filters, for other counts repeat them and
  scale by ``3 / channels``;
- refuse variants that are not the torchvision architecture with a message naming them: timm's
  deep-stem ResNet-C/D (``conv1.0.weight``), average-pool downsampling (ResNet-D), squeeze-excite
  blocks, the pre-activation ResNetV2/BiT (``stem.conv``, ``stages.*``); anything else that does
  not fit raises :class:`~retinassl.errors.CheckpointError` listing missing, unexpected and
  mis-shaped keys (:func:`retinassl.models.checkpoint.load_state_strict`).

Files are read by :func:`retinassl.models.checkpoint.read_state_dict`: safetensors, or ``.pth``/``.pt``/
``.bin`` only with ``allow_pickle=True`` (then with ``torch.load(weights_only=True)``).

ImageNet weights expect ImageNet normalisation: pair them with ``preprocess.normalize: imagenet``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from retinassl.io.saved_model import load_state_strict, read_state_dict
from retinassl.errors import CheckpointError

log = logging.getLogger(__name__)

WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "model.", "_orig_mod.")
CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "head.", "classifier.", "last_linear.")
FIRST_CONV = "conv1.weight"


@dataclass
class MappingReport:
    """What :func:`map_state_dict` changed."""

    stripped_prefixes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.stripped_prefixes:
            parts.append(f"stripped prefix {'+'.join(self.stripped_prefixes)}")
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} classifier keys ({', '.join(self.dropped[:4])})")
        if self.filled:
            parts.append(f"filled {len(self.filled)} num_batches_tracked counters")
        if self.adapted:
            parts.append(f"adapted {', '.join(self.adapted)} to the input channels")
        return "; ".join(parts) or "no changes"


def _foreign_architecture(keys: list[str]) -> str | None:
    """Name a ResNet variant that cannot fit the torchvision architecture, from its keys."""
    keyset = set(keys)
    if any(k.startswith(("stem.", "stages.")) for k in keys):
        return ("a timm ResNetV2/BiT-style network (keys 'stem.*', 'stages.*'): pre-activation "
                "blocks, not the torchvision ResNet")
    if "conv1.0.weight" in keyset:
        return ("a deep-stem ResNet-C/D (timm 'resnet*d' / 'resnet*c', key 'conv1.0.weight'): three "
                "3x3 stem convolutions instead of one 7x7")
    if any(k.endswith("downsample.2.weight") for k in keys):
        return "a ResNet-D with average-pool downsampling (keys 'downsample.2.*')"
    if any(".se." in k or ".se_module." in k for k in keys):
        return "a squeeze-and-excitation ResNet (keys '*.se.*')"
    return None


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """timm's ``adapt_input_conv``: a ``(O, 3, k, k)`` filter bank for ``channels`` inputs (1: the
    sum over RGB; otherwise RGB repeated and scaled by ``3 / channels``)."""
    if weight.shape[1] == channels:
        return weight
    if channels == 1:
        return weight.float().sum(dim=1, keepdim=True).to(weight.dtype)
    repeats = -(-channels // weight.shape[1])
    return (weight.float().repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)).to(weight.dtype)


def unwrap_state_dict(state: dict[str, torch.Tensor], prefix: str | None, source: object,
                      report: MappingReport) -> dict[str, torch.Tensor]:
    """The keys under ``prefix`` (stripped), or else with every shared ``module.``/``model.``/
    ``_orig_mod.`` wrapper stripped, repeatedly; the stripped prefixes are added to ``report``.

    Raises:
        CheckpointError: nothing under ``prefix``, or no weights at all.
    """
    if prefix:
        state = _strip(state, prefix)
        if not state:
            raise CheckpointError(f"{source}: no weights under the prefix {prefix!r}")
        report.stripped_prefixes.append(prefix)
    changed = True
    while changed and state:
        changed = False
        for wrapper in WRAPPER_PREFIXES:
            if all(k.startswith(wrapper) for k in state):
                state = _strip(state, wrapper)
                report.stripped_prefixes.append(wrapper)
                changed = True
    if not state:
        raise CheckpointError(f"{source}: contains no weights")
    return state


def map_state_dict(state: dict[str, torch.Tensor], model: nn.Module, prefix: str | None = None,
                   source: object = "state dict") -> tuple[dict[str, torch.Tensor], MappingReport]:
    """Map a foreign state dict onto ``model``'s keys (see the module docstring).

    Args:
        state: flat ``name -> tensor`` weights.
        model: the encoder the weights are meant for.
        prefix: keep only keys under this prefix (and strip it) instead of guessing wrappers.
        source: what to name in error messages (the file).

    Returns:
        ``(mapped state, report)``; the mapped state may still not fit (checked on loading).

    Raises:
        CheckpointError: the state dict is empty, has nothing under ``prefix``, or is a ResNet
            variant that cannot fit.
    """
    report = MappingReport()
    state = unwrap_state_dict(state, prefix, source, report)
    foreign = _foreign_architecture(list(state))
    if foreign:
        raise CheckpointError(f"{source}: the weights are {foreign}; they do not fit "
                              f"{type(model).__name__}. Use a plain torchvision/timm resnet18/34/50.")
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(CLASSIFIER_PREFIXES) and key not in own:
            report.dropped.append(key)
            continue
        mapped[key] = value
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(value)
            report.filled.append(key)
    if FIRST_CONV in mapped and FIRST_CONV in own:
        theirs, ours = mapped[FIRST_CONV], own[FIRST_CONV]
        if theirs.ndim == 4 and theirs.shape[1] != ours.shape[1] and theirs.shape[0] == ours.shape[0]:
            mapped[FIRST_CONV] = adapt_input_conv(theirs, ours.shape[1])
            report.adapted.append(f"{FIRST_CONV} {tuple(theirs.shape)} -> {tuple(ours.shape)}")
    return mapped, report


def load_external_weights(model: nn.Module, path: str | Path, allow_pickle: bool = False,
                          prefix: str | None = None) -> MappingReport:
    """Read a torchvision/timm-style weights file, map it (:func:`map_state_dict`) and load it
    into ``model`` exactly (every parameter and buffer of the model must be set).

    Raises:
        CheckpointError: unreadable or pickle-based file (without ``allow_pickle``), a ResNet
            variant that cannot fit, or missing / unexpected / mis-shaped keys (named).
    """
    path = Path(path)
    state = read_state_dict(path, allow_pickle=allow_pickle)
    mapped, report = map_state_dict(state, model, prefix=prefix, source=path)
    load_state_strict(model, mapped, source=path)
    log.info("loaded external weights %s (%s)", path, report.summary())
    return report

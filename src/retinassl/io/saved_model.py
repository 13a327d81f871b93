"""Saved models: ONE format for every kind of model the toolkit leaves behind.

A saved model is a directory holding ``model.safetensors`` (every weight, named by the part it belongs
to: ``encoder.*``, ``head.*``, ``decoder.*``) and ``model.json``, one schema for all kinds::

    {"format": "retinassl-model", "format_version": 2,
     "kind": "encoder" | "classifier" | "patch-classifier" | "segmenter" | "layer-model" | "cross-modal",
     "arch": "resnet18", "kwargs": {...}, "num_features": 512,   # the encoder every kind contains
     "preprocess": {...} | null,       # what the inputs need (size, normalisation, crop...)
     "method": "rotation" | null, "config": {...} | null, "data_fingerprint": "..." | null,
     "versions": {...}, "created": "2026-...",
     ...}                               # kind-specific keys (head, task, decoder, boundaries, ...)

This module is the only place that writes model weights (:func:`save_model`) and the one reader
(:func:`read_model`); what a kind's JSON keys mean, and how its network is rebuilt, is the business of
the module that owns the kind (:mod:`retinassl.models.checkpoint` for encoders, ...).

Directories written by the earlier formats (``encoder.json`` + ``encoder.safetensors`` [+
``head.safetensors``], ``segmenter.json`` + ``segmenter.safetensors``, ``layerseg.json`` +
``layerseg.safetensors``) are read too, converted on the fly to the same dictionary and weight names
(:func:`legacy_model`), so old runs keep working.

Weights are never unpickled. A ``.pt``/``.pth``/``.ckpt`` file made elsewhere is refused unless the
caller passes ``allow_pickle=True``, and even then it is read with ``torch.load(weights_only=True)``,
which cannot execute code.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from retinassl import __version__
from retinassl.atomic import atomic_path, write_text
from retinassl.errors import CheckpointError

FORMAT = "retinassl-model"
FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
META = "model.json"
KINDS = ("encoder", "classifier", "patch-classifier", "segmenter", "layer-model", "cross-modal")

# the earlier formats: JSON name -> (its "format" value, weights file, kind when not told otherwise)
LEGACY = {"encoder.json": ("retinassl-encoder", "encoder.safetensors", "encoder"),
          "segmenter.json": ("retinassl-segmenter", "segmenter.safetensors", "segmenter"),
          "layerseg.json": ("retinassl-oct-layers", "layerseg.safetensors", "layer-model")}


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a saved model."""
    import monai

    return {"retinassl": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version()}


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (contiguous CPU copies) to the safetensors file ``path``, atomically: the one
    place the toolkit writes safetensors (saved models, training checkpoints, feature caches)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def module_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A module's weights as contiguous CPU tensors, names prefixed (``prefix="head."``)."""
    return {prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_model(directory: str | Path, kind: str, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` (``state``) and then ``model.json`` (``meta`` plus format, kind,
    versions and time) into ``directory``, each atomically; returns the directory.

    ``meta`` must name the encoder (``arch``, ``kwargs``); the JSON is written last, so a directory
    with a ``model.json`` always has its weights.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if "arch" not in meta or "kwargs" not in meta:
        raise ValueError("a saved model's meta names its encoder: 'arch' and 'kwargs'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / WEIGHTS, state)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, **meta,
            "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_text(directory / META, json.dumps(full, indent=2, default=str))
    return directory


@dataclass
class SavedModel:
    """A saved model read back: its directory, JSON (current schema) and weights."""

    directory: Path
    meta: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """The weights under ``prefix`` (e.g. ``"encoder."``), with the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}

    @property
    def weights_file(self) -> Path:
        return self.directory / WEIGHTS


def model_directory(path: str | Path) -> Path:
    """The saved-model directory that ``path`` names: the directory itself, or any of its JSON files."""
    path = Path(path)
    if path.is_file() and (path.name == META or path.name in LEGACY):
        return path.parent
    return path


def is_saved_model(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a complete saved model (current or earlier format)."""
    directory = Path(path)
    return (directory / META).is_file() or any((directory / name).is_file() for name in LEGACY)


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of the saved model at ``path`` (its directory or JSON file): one in the current
    format, an encoder's and a head's in the earlier one."""
    return [file for _, file in _locate(path, "")[1]]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None


def read_model_meta(path: str | Path, kinds: tuple[str, ...] | None = None, hint: str = "") -> dict[str, Any]:
    """The JSON of a saved model (current schema, legacy files converted), checked for its kind.

    Args:
        path: the model's directory, or its JSON file.
        kinds: the kinds the caller can use (None: any).
        hint: where such a model comes from, for the error when there is none.
    """
    meta, _ = _locate(path, hint)
    if kinds is not None and meta["kind"] not in kinds:
        raise CheckpointError(f"{model_directory(path)}: a saved {meta['kind']} model, not "
                              f"{' or '.join(kinds)}")
    return meta


def read_model(path: str | Path, kinds: tuple[str, ...] | None = None, hint: str = "") -> SavedModel:
    """A saved model's JSON and weights (see :func:`read_model_meta`)."""
    meta = read_model_meta(path, kinds, hint)
    _, files = _locate(path, hint)
    state: dict[str, torch.Tensor] = {}
    for prefix, file in files:
        state.update({prefix + k: v for k, v in read_safetensors(file).items()})
    return SavedModel(model_directory(path), meta, state)


def _locate(path: str | Path, hint: str) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """The converted JSON of the model at ``path`` and its weight files with the prefix of each."""
    directory = model_directory(path)
    if (directory / META).is_file():
        meta = read_json(directory / META)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{directory / META}: not a retinassl saved model")
        if meta.get("kind") not in KINDS:
            raise CheckpointError(f"{directory / META}: unknown model kind {meta.get('kind')!r}")
        for key in ("arch", "kwargs"):
            if key not in meta:
                raise CheckpointError(f"{directory / META}: no {key!r} (the encoder it rebuilds)")
        return meta, [("", directory / WEIGHTS)]
    for name in LEGACY:
        if (directory / name).is_file():
            return legacy_model(directory, name)
    raise CheckpointError(f"{path}: no {META} found (a saved model is a directory with {META} and "
                          f"{WEIGHTS}{'; ' + hint if hint else ''})")


def legacy_model(directory: Path, name: str) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """Convert a directory of an earlier format (format version 1) to the current JSON schema and
    weight names: encoders' weights get ``encoder.``, heads' ``head.``; a U-Net's names are kept."""
    fmt, weights, kind = LEGACY[name]
    old = read_json(directory / name)
    if not isinstance(old, dict) or old.get("format") != fmt:
        raise CheckpointError(f"{directory / name}: not a retinassl saved model")
    meta = {k: v for k, v in old.items() if k not in ("format", "format_version")}
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, kind=kind, converted_from=fmt)
    files = [("", directory / weights)]
    if name == "encoder.json":
        files = [("encoder.", directory / weights)]
        if (directory / "head.safetensors").is_file():
            files.append(("head.", directory / "head.safetensors"))
            meta["kind"] = "patch-classifier" if "patch_classifier" in old else "classifier"
    elif name == "layerseg.json":
        meta["kwargs"] = meta.pop("encoder_kwargs", {})
    for key in ("arch", "kwargs"):
        if key not in meta:
            raise CheckpointError(f"{directory / name}: no {key!r} (the encoder it rebuilds)")
    return meta, files


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_torch_file(path: str | Path, allow_pickle: bool, safe_globals: Sequence[type] = ()) -> Any:
    """The object in a pickle-based torch file (``.pt``/``.pth``/``.bin``), only with
    ``allow_pickle``, and then through ``torch.load(weights_only=True)``, which runs no code
    (``safe_globals``: further plain classes the file may hold, e.g. ``argparse.Namespace``)."""
    path = Path(path)
    if not allow_pickle:
        raise CheckpointError(f"{path}: refusing to load a pickle-based checkpoint; convert it to "
                              f"safetensors, or allow it to be read with torch.load(weights_only=True): "
                              f"--allow-pickle (train, pretrain, oct pretrain, segment train, semisup "
                              f"train) or the override model.allow_pickle=true (evaluate, sweep)")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({exc})") from None


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file, or (only with ``allow_pickle``) a torch ``.pt/.pth`` file
    read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = read_torch_file(path, allow_pickle)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not contain a flat state dict of tensors")
    return state


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: object, *,
                      what: str = "the model", name_keys: Callable[[list[str]], str] | None = None,
                      hint: Callable[[], str] | None = None) -> None:
    """Load ``state`` into ``module``, or raise a CheckpointError listing what does not fit.

    Args:
        what: how the error names the module ("the model").
        name_keys: how a list of keys is named in the error (default: "e.g." and the first three).
        hint: called only on failure, its text ends the error (e.g. which architecture would fit).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        name = name_keys or (lambda keys: "e.g. " + ", ".join(keys[:3]))
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({name(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({name(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:3])})")
        raise CheckpointError(f"{source}: weights do not fit {what}: {', '.join(parts)}{hint() if hint else ''}")
    module.load_state_dict(state, strict=True)

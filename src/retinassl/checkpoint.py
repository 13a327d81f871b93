"""Encoder checkpoints: safetensors weights beside a JSON that rebuilds the encoder exactly.

The encoder is the product of pretraining (timm's pretrained config): ``<dir>/encoder.safetensors``
holds its weights and ``<dir>/encoder.json`` its architecture name and keyword arguments, the
preprocessing its inputs need, the method and resolved config that trained it, a fingerprint of the
training data and the library versions. :func:`load_encoder` needs nothing else.

Weights are never unpickled. A ``.pt``/``.pth``/``.ckpt`` file made elsewhere is refused unless the
caller passes ``allow_pickle=True``, and even then it is read with ``torch.load(weights_only=True)``,
which cannot execute code.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .atomic import atomic_path, write_text
from .errors import CheckpointError
from .models import Encoder, build_encoder

ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_META = "encoder.json"
FORMAT = "retinassl-encoder"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint."""
    import monai

    return {"retinassl": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version()}


def save_encoder(directory: str | Path, encoder: Encoder, *, arch: str, kwargs: dict[str, Any],
                 preprocess: dict[str, Any] | None = None, method: str | None = None,
                 config: dict[str, Any] | None = None, data_fingerprint: str | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``encoder.safetensors`` + ``encoder.json`` into ``directory``; returns the JSON path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(directory / ENCODER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "kwargs": kwargs,
            "preprocess": preprocess, "method": method, "config": config,
            "data_fingerprint": data_fingerprint, "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_features": int(encoder.num_features)}
    if extra:
        meta.update(extra)
    path = directory / ENCODER_META
    write_text(path, json.dumps(meta, indent=2, default=str))
    return path


def read_meta_json(path: str | Path, meta_name: str, fmt: str, what: str, hint: str) -> dict[str, Any]:
    """The JSON half of a saved model (encoder, segmenter, layer model...), checked for its format.

    Args:
        path: the model's directory, or its JSON file.
        meta_name: the JSON file's name inside the directory.
        fmt: the value its ``format`` key must have.
        what: what the model is, for errors ("a retinassl encoder checkpoint").
        hint: what such a directory holds or where it comes from, for the missing-file error.
    """
    path = Path(path)
    meta_path = path / meta_name if path.is_dir() else path
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: no {meta_name} found ({hint})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: invalid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{meta_path}: not {what}")
    return meta


def read_encoder_meta(path: str | Path) -> dict[str, Any]:
    """The JSON of an encoder checkpoint (``path`` is the directory or the JSON file)."""
    return read_meta_json(path, ENCODER_META, FORMAT, "a retinassl encoder checkpoint",
                          f"an encoder checkpoint is a directory with {ENCODER_META} and {ENCODER_WEIGHTS}")


def load_encoder(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder and load its weights; returns ``(encoder, meta)``."""
    path = Path(path)
    meta = read_encoder_meta(path)
    directory = path if path.is_dir() else path.parent
    encoder = build_encoder(meta["arch"], **meta["kwargs"])
    state = read_safetensors(directory / ENCODER_WEIGHTS)
    load_state_strict(encoder, state, source=directory / ENCODER_WEIGHTS)
    return encoder, meta


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file, or (only with ``allow_pickle``) a torch ``.pt/.pth`` file
    read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if not allow_pickle:
        raise CheckpointError(f"{path}: refusing to load a pickle-based checkpoint; convert it to "
                              f"safetensors, or pass --allow-pickle to read it with "
                              f"torch.load(weights_only=True)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not contain a flat state dict of tensors")
    return state


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: object) -> None:
    """Load ``state`` into ``module``, or raise a CheckpointError listing what does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:3])})")
        raise CheckpointError(f"{source}: weights do not fit the model: {', '.join(parts)}")
    module.load_state_dict(state, strict=True)

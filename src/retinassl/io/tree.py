"""Saving nested Python state (training checkpoints) as safetensors + JSON, never pickle.

A training checkpoint is a tree of dicts, lists and tuples whose leaves are tensors, numpy arrays,
numbers, strings, booleans and None (Lightning's checkpoint dict, optimizer states, RNG states).
:func:`save_tree` stores every tensor/array leaf in one safetensors file and the rest of the tree,
with references to those tensors, in a JSON file; :func:`load_tree` rebuilds the identical tree.
Loading executes no code from the file, so a checkpoint from an untrusted source is safe to open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from retinassl.atomic import write_text
from retinassl.io.saved_model import write_safetensors
from retinassl.errors import CheckpointError

_TAG = "__retinassl__"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TAG: "tensor", "key": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {_TAG: "ndarray", "key": key}
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if np.isfinite(value):
            return value
        return {_TAG: "float", "repr": repr(value)}
    if isinstance(obj, tuple):
        return {_TAG: "tuple", "items": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and _TAG not in obj:
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {_TAG: "dict", "items": [[_encode(k, tensors, path), _encode(v, tensors, f"{path}[{k!r}]")]
                                        for k, v in obj.items()]}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return {_TAG: "dtype", "name": str(obj).removeprefix("torch.")}
    raise CheckpointError(f"cannot store {type(obj).__name__} at {path or 'the root'} in a "
                          f"safetensors checkpoint (only tensors, arrays, numbers, strings and "
                          f"containers are allowed)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj.get(_TAG)
    if tag is None:
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if tag == "tensor":
        return tensors[obj["key"]]
    if tag == "ndarray":
        return tensors[obj["key"]].numpy()
    if tag == "float":
        return float(obj["repr"])
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in obj["items"])
    if tag == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["items"]}
    if tag == "dtype":
        return getattr(torch, obj["name"])
    raise CheckpointError(f"unknown entry type {tag!r} in checkpoint")


def save_tree(tree: Any, json_path: str | Path) -> None:
    """Write ``tree`` as ``<stem>.safetensors`` + ``json_path`` (both atomically; JSON last)."""
    json_path = Path(json_path)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors, "")
    weights = json_path.with_suffix(".safetensors")
    # Tensors sharing memory must be stored separately in safetensors.
    tensors = {k: v.clone() if v.untyped_storage().nbytes() != v.nbytes else v for k, v in tensors.items()}
    write_safetensors(weights, tensors)
    write_text(json_path, json.dumps({"format": "retinassl-tree", "version": 1,
                                      "tensors": weights.name, "tree": encoded}))


def load_tree(json_path: str | Path) -> Any:
    """Read a tree written by :func:`save_tree`."""
    json_path = Path(json_path)
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{json_path}: not a readable checkpoint ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "retinassl-tree":
        raise CheckpointError(f"{json_path}: not a retinassl checkpoint")
    name = meta.get("tensors")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(f"{json_path}: its tensor file must be a file name beside it, not {name!r}")
    weights = json_path.with_name(name)
    try:
        tensors = load_file(str(weights))
    except (OSError, Exception) as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{weights}: unreadable tensor file ({exc})") from None
    return _decode(meta["tree"], tensors)

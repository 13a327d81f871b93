"""Encoders saved and loaded: the encoder is the product of pretraining (timm's pretrained config).

An encoder is saved in the one saved-model format (:mod:`retinassl.io.saved_model`, kind
``encoder``): ``model.safetensors`` holds its weights (``encoder.*``) and ``model.json`` its
architecture name and keyword arguments, the preprocessing its inputs need, the method and resolved
config that trained it, a fingerprint of the training data and the library versions.
:func:`load_encoder` needs nothing else, and takes the encoder out of a saved model of ANY kind (a
fine-tuned classifier, a patch classifier, a vessel segmenter, an OCT layer model), since each holds
its encoder under the same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retinassl.io.saved_model import load_state_strict, module_state, read_model, read_model_meta, save_model
from retinassl.models.base import Encoder
from retinassl.models.registry import build_encoder

ENCODER_HINT = "`retinassl pretrain` and `retinassl train` write one into <run>/encoder"


def encoder_meta(encoder: Encoder, *, arch: str, kwargs: dict[str, Any],
                 preprocess: dict[str, Any] | None = None, method: str | None = None,
                 config: dict[str, Any] | None = None, data_fingerprint: str | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON keys every saved model has about its encoder (and how it was trained)."""
    meta = {"arch": arch, "kwargs": kwargs, "preprocess": preprocess, "method": method,
            "config": config, "data_fingerprint": data_fingerprint,
            "num_features": int(encoder.num_features)}
    meta.update(extra or {})
    return meta


def save_encoder(directory: str | Path, encoder: Encoder, *, arch: str, kwargs: dict[str, Any],
                 preprocess: dict[str, Any] | None = None, method: str | None = None,
                 config: dict[str, Any] | None = None, data_fingerprint: str | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Save ``encoder`` alone (kind ``encoder``) into ``directory``; returns the directory."""
    meta = encoder_meta(encoder, arch=arch, kwargs=kwargs, preprocess=preprocess, method=method,
                        config=config, data_fingerprint=data_fingerprint, extra=extra)
    return save_model(directory, "encoder", module_state(encoder, "encoder."), meta)


def read_encoder_meta(path: str | Path) -> dict[str, Any]:
    """The JSON of a saved model (any kind: each holds an encoder); ``path`` is its directory or JSON."""
    return read_model_meta(path, hint=ENCODER_HINT)


def load_encoder(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild the encoder of a saved model (any kind) and load its weights; returns ``(encoder, meta)``."""
    saved = read_model(path, hint=ENCODER_HINT)
    encoder = build_encoder(saved.meta["arch"], **saved.meta["kwargs"])
    load_state_strict(encoder, saved.part("encoder."), source=saved.weights_file)
    return encoder, saved.meta

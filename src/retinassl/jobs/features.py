"""Frozen-encoder embeddings, extracted once per (encoder weights, images, preprocessing) and cached.

A linear probe over 7 label fractions x several seeds x folds needs the same embeddings dozens of
times; they are computed once and stored as ``<cache>/features/<key>.safetensors`` (float32
``(N, C)``, the image ids in the file's metadata). The key hashes

- the encoder's exact weights and buffers (:func:`state_hash`: every tensor's name, dtype, shape
  and bytes) and its class,
- the images' *content* and geometric preprocessing (each cache entry's directory is named by the
  preprocessing key and the file's BLAKE2b digest, :mod:`retinassl.data.cache`), in row order,
  together with the ids,
- the intensity normalisation and the input size,

so a changed weight, image or setting can never return stale features, while renaming or moving
a dataset (or relabelling it) reuses them. Labels are deliberately not part of the key.

Embeddings are the encoder's pooled output (global average of ``forward_features``; a ViT's class
token or mean patch token, part of the key), computed in eval mode, float32, without gradients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from torch import nn

from retinassl.io.saved_model import write_safetensors
from retinassl.data.cache import PreparedData, default_cache_dir
from retinassl.data.datasets import ImageDataset
from retinassl.models.vit_transfer import pooling_of

log = logging.getLogger(__name__)

FEATURES_FORMAT = "retinassl-features-1"


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's class and state dict (names, dtypes, shapes, bytes), in key order."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(prepared: PreparedData, size: int | None = None) -> str:
    """SHA-256 of what the encoder sees: ids, cached-pixel identities, normalisation, input size."""
    h = hashlib.sha256()
    config = prepared.config
    setting = {"normalize": config.normalize, "size": size or config.size, "channels": config.channels}
    if config.normalize == "meanstd":  # (keys of the other modes are as before the mode existed)
        setting.update(mean=list(config.normalize_mean), std=list(config.normalize_std))
    h.update(json.dumps(setting, sort_keys=True).encode())
    for ident, entry in zip(prepared.manifest.frame["id"].astype(str), prepared.entries):
        # <cache>/<preprocess key>/<digest[:2]>/<digest>
        h.update(f"{ident}|{entry.directory.parent.parent.name}|{entry.directory.name}\n".encode())
    return h.hexdigest()


@dataclass
class Features:
    """Embeddings of every row of a prepared dataset.

    Attributes:
        values: ``(N, C)`` float32; row ``i`` is prepared row ``i``.
        ids: the ``N`` manifest ids.
        key: the cache key.
        path: the cache file.
        extracted: images passed through the encoder by this call (0 when read from the cache).
        seconds: wall time of this call.
    """

    values: np.ndarray
    ids: list[str]
    key: str
    path: Path
    extracted: int
    seconds: float


def feature_key(encoder: nn.Module, prepared: PreparedData, size: int | None = None) -> str:
    """The cache key of ``encoder``'s embeddings of ``prepared`` (see the module docstring)."""
    parts = [FEATURES_FORMAT, state_hash(encoder), data_fingerprint(prepared, size), f"pool={pooling_of(encoder)}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@torch.no_grad()
def embed(encoder: nn.Module, prepared: PreparedData, batch_size: int = 64,
          size: int | None = None) -> np.ndarray:
    """``(N, C)`` float32 pooled embeddings of every prepared row (eval mode, no gradients).

    The encoder's training/eval mode is restored afterwards.
    """
    dataset = ImageDataset(prepared, size=size)
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size,
                                                                                len(dataset)))])
            out.append(encoder(batch.contiguous(memory_format=torch.channels_last)).float().numpy())
    finally:
        encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, int(getattr(encoder, "num_features", 0))),
                                                    dtype=np.float32)


def extract_features(encoder: nn.Module, prepared: PreparedData, cache_dir: str | Path | None = None,
                     batch_size: int = 64, size: int | None = None) -> Features:
    """Embeddings of every row of ``prepared``, from the feature cache or computed once and cached.

    Args:
        encoder: the (frozen) encoder; its pooled ``forward`` gives ``(B, C)``.
        prepared: the images (all rows are embedded).
        cache_dir: the toolkit cache (features go to ``<cache_dir>/features``; default
            :func:`~retinassl.data.cache.default_cache_dir`).
        batch_size: images per forward pass.
        size: input side (default: the cached size).
    """
    start = time.perf_counter()
    key = feature_key(encoder, prepared, size)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "features" / f"{key}.safetensors"
    ids = prepared.manifest.frame["id"].astype(str).tolist()
    if path.is_file():
        try:
            stored = load_file(str(path))["features"]
            from safetensors import safe_open

            with safe_open(str(path), "np") as fh:
                stored_ids = json.loads(fh.metadata()["ids"])
            if stored_ids == ids and stored.shape[0] == len(ids):
                log.info("features %s: read from the cache (%d x %d)", key[:12], *stored.shape)
                return Features(stored, ids, key, path, 0, time.perf_counter() - start)
            log.warning("feature cache %s does not match the data: recomputing", path)
        except Exception as exc:  # a damaged file is recomputed, never trusted
            log.warning("feature cache %s unreadable (%s): recomputing", path, exc)
    values = embed(encoder, prepared, batch_size, size)
    write_safetensors(path, {"features": torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))},
                      metadata={"ids": json.dumps(ids), "format": FEATURES_FORMAT})
    seconds = time.perf_counter() - start
    log.info("features %s: extracted %d images in %.1f s", key[:12], len(ids), seconds)
    return Features(values, ids, key, path, len(ids), seconds)

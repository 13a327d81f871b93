"""The encoder a :class:`~retinassl.config.ModelConfig` asks for: from scratch, from one of our
encoder checkpoints, or from a weights file made elsewhere (``model.init``)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from retinassl.data.file_digests import remembered_file_digest
from retinassl.data.preprocess import PreprocessConfig
from retinassl.io.saved_model import LEGACY, META, is_saved_model, model_directory, weight_files
from retinassl.models.checkpoint import load_encoder
from retinassl.config import ModelConfig
from retinassl.errors import CheckpointError, ConfigError
from retinassl.models.base import Encoder
from retinassl.models.external import load_external_weights
from retinassl.models.published import published_model
from retinassl.models.vit import VisionTransformer
from retinassl.models.vit_weights import load_vit_weights
from retinassl.models.registry import build_encoder

log = logging.getLogger(__name__)


InitKind = Literal["scratch", "checkpoint", "external"]


def init_kind(model: ModelConfig) -> InitKind:
    """``scratch``, ``checkpoint`` (a saved model's directory, or its JSON file) or
    ``external`` (any other existing file).

    Raises:
        CheckpointError: ``init`` names nothing that exists.
    """
    if model.init == "scratch":
        return "scratch"
    path = Path(model.init)
    if path.is_dir() or path.name == META or path.name in LEGACY:
        return "checkpoint"
    if path.is_file():
        return "external"
    raise CheckpointError(f"{path}: model.init is neither 'scratch', an encoder checkpoint directory "
                          f"nor a weights file")


@dataclass
class InitialEncoder:
    """An encoder as ``model.init`` asks for it, with what rebuilds it (for its checkpoint JSON)."""

    encoder: Encoder
    arch: str
    kwargs: dict[str, Any]
    kind: InitKind


def initial_encoder(model: ModelConfig) -> InitialEncoder:
    """Build the encoder of ``model``: from scratch, from an encoder checkpoint (which brings its own
    architecture; a differing ``model.arch`` is logged and ignored), or with external weights
    loaded into ``build_encoder(model.arch, **model.kwargs)``.

    A ``model.weights`` name (a published model) sets ``arch`` and ``kwargs`` first
    (:func:`~retinassl.models.published.published_model`).

    Raises:
        CheckpointError: ``init`` does not exist, or its weights do not fit (keys named).
        ConfigError: an unknown ``model.weights``, or one that contradicts ``model.arch``.
    """
    model = published_model(model)
    kind = init_kind(model)
    if kind == "scratch":
        return InitialEncoder(build_encoder(model.arch, **model.kwargs), model.arch, dict(model.kwargs), kind)
    if kind == "checkpoint":
        encoder, meta = load_encoder(model.init)
        if meta["arch"] != model.arch:
            log.warning("model.arch is %s but %s holds a %s encoder: using the checkpoint's",
                        model.arch, model.init, meta["arch"])
        return InitialEncoder(encoder, meta["arch"], dict(meta["kwargs"]), kind)
    encoder = build_encoder(model.arch, **model.kwargs)
    load_weights_file(encoder, model.init, allow_pickle=model.allow_pickle, prefix=model.init_prefix)
    return InitialEncoder(encoder, model.arch, dict(model.kwargs), kind)


EncoderInput = tuple[str, PreprocessConfig, str]
"""A saved encoder a job may start from (``model.init``), the preprocessing of the inputs the job
prepares for it, and the config key that names it (for messages)."""


@runtime_checkable
class StartsFromEncoders(Protocol):
    """A job config that may start from saved encoders: it states which, and how it prepares the
    inputs each will see (after ``model.weights`` is applied), so that one check serves every job."""

    def encoder_inputs(self) -> list[EncoderInput]: ...


def model_encoder_inputs(config: Any, inputs: Any = None) -> list[EncoderInput]:
    """The :meth:`StartsFromEncoders.encoder_inputs` of a job config with ``model`` and ``preprocess``:
    its ``model.init`` and the inputs it will see, ``model.weights`` applied (``inputs(config)``
    when the job prepares its inputs otherwise than ``preprocess`` says, else ``preprocess``)."""
    from retinassl.models.published import with_published

    config = with_published(config)
    return [(config.model.init, config.preprocess if inputs is None else inputs(config), "model.init")]


def check_encoder_inputs(config: Any) -> None:
    """:func:`check_init_preprocess` for each of a job config's :meth:`StartsFromEncoders.
    encoder_inputs`; a config that starts from no saved encoder (segmentation, whose encoder sees its
    own vessel inputs; evaluation-only configs) passes.

    Raises:
        ConfigError: an encoder trained on inputs prepared otherwise (each differing field named).
    """
    if isinstance(config, StartsFromEncoders):
        for init, preprocess, who in config.encoder_inputs():
            check_init_preprocess(init, preprocess, who)


def check_init_preprocess(init: str, preprocess: PreprocessConfig, who: str = "model.init") -> None:
    """Refuse an encoder checkpoint whose inputs were prepared otherwise than ``preprocess`` will
    prepare them (colour standardisation, normalisation, CLAHE, crop...; anything but the size, which
    the resolution study changes on purpose; compared as :meth:`~retinassl.data.preprocess.
    PreprocessConfig.input_signature`, so settings of options that are off and equivalent spellings
    do not count): its features would be computed on images unlike those it learnt from, and every
    number from it would be silently off. A checkpoint that records no preprocessing, scratch and
    weights made elsewhere (their inputs are the user's to set: :mod:`~retinassl.models.published`)
    pass (a saved model's own weights file given as a weights file is checked as that model); a saved
    vessel segmenter or OCT layer model is refused as such (their encoders saw other inputs than
    fundus photographs prepared by a ``preprocess``; the bare encoder a segmentation run also saves
    records only its geometry, so it is compared as any encoder).

    Raises:
        ConfigError: the differing fields, with the checkpoint's value and the one given; a model whose
            encoder saw another kind of input.
        CheckpointError: ``init`` is not a readable saved model.
    """
    path = Path(init)
    if path.is_file() and is_saved_model(path.parent):
        try:
            if path.resolve() in {f.resolve() for f in weight_files(path.parent)}:
                init = str(path.parent)  # a saved model's own weights file, given as a weights file
        except CheckpointError:  # another tool's model.json beside a foreign weights file
            pass
    if init == "scratch" or not is_saved_model(model_directory(Path(init))):
        return
    from retinassl.models.checkpoint import read_encoder_meta

    meta = read_encoder_meta(init)
    if meta.get("kind") == "segmenter":
        raise ConfigError(f"{who}: {init} is a vessel segmenter; its encoder saw its own vessel inputs "
                          f"({meta.get('input')}), not images prepared by a run's preprocess. Use its encoder "
                          "in a segmentation run (retinassl segment), or an encoder trained on photographs")
    if meta.get("kind") == "layer-model":
        raise ConfigError(f"{who}: {init} is an OCT layer model; its encoder saw OCT B-scans, not fundus "
                          "photographs prepared by a run's preprocess")
    recorded_dict = meta.get("preprocess")
    if not recorded_dict:
        log.info("%s: %s records no preprocessing; its inputs cannot be checked", who, init)
        return
    try:
        recorded = PreprocessConfig.model_validate(recorded_dict)
    except Exception as exc:  # recorded by a version whose options this one does not read
        first = str(exc).splitlines()[1:3]
        raise ConfigError(f"{who}: {init} records a preprocessing this version cannot read "
                          f"({' '.join(line.strip() for line in first)})") from None
    ours, theirs = preprocess.input_signature(), recorded.input_signature()
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        published = (meta.get("weights") or {}).get("name") if isinstance(meta.get("weights"), dict) else None
        hint = f" (it was trained with model.weights={published}: give the same)" if published else ""
        raise ConfigError(
            f"{who}: {init} was trained on inputs prepared otherwise than this run prepares them: "
            + "; ".join(f"preprocess.{k} is {ours.get(k, _setting(preprocess, k))!r}, the encoder's "
                        f"{theirs.get(k, _setting(recorded, k))!r}" for k in differ)
            + f". Set the run's preprocess to the encoder's{hint} (only the size may differ), or evaluate "
            "it in a study of its own")


def _setting(config: PreprocessConfig, name: str) -> object:
    value = getattr(config, name)
    return list(value) if isinstance(value, tuple) else value


def load_weights_file(encoder: Encoder, path: str | Path, allow_pickle: bool = False,
                      prefix: str | None = None) -> Any:
    """Weights made elsewhere into ``encoder``, through the key mapping of its family: ViTs
    (RETFound, DINOv2, RETFound-Green, timm; :mod:`~retinassl.models.vit_weights`), ResNets
    (torchvision, timm; :mod:`~retinassl.models.external`). Returns the mapping report."""
    if isinstance(encoder, VisionTransformer):
        return load_vit_weights(encoder, path, allow_pickle=allow_pickle, prefix=prefix)
    return load_external_weights(encoder, path, allow_pickle=allow_pickle, prefix=prefix)


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Layer initialisation inside the block draws from ``seed``; the global RNG is left as it was
    (PyTorch's default initialisers draw from the global generator)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seeded_initial_encoder(model: ModelConfig, seed: int) -> InitialEncoder:
    """:func:`initial_encoder` with scratch weights drawn from ``seed``: same seed, same weights."""
    with seeded_init(seed):
        return initial_encoder(model)


def init_label(init: str, names: dict[str, str] | None = None) -> str:
    """How an initialisation is named in every results table (transfer, vessel curve, single
    evaluations), so that tables of the same checkpoint join: ``scratch``; a name given in ``names``;
    for a saved model, the name of the run directory that holds it (``runs/pretrain-rotation-.../
    encoder`` -> ``pretrain-rotation-...``); for another weights file, its stem."""
    if init == "scratch":
        return "scratch"
    if names and init in names:
        return names[init]
    path = Path(init).resolve()
    if path.name == META or path.name in LEGACY:
        path = path.parent
    stem = path.parent.name if path.name == "encoder" else path.stem if path.is_file() else path.name
    cleaned = "".join(c if c.isalnum() or c in "._+-" else "-" for c in stem).strip("-.")
    return cleaned or "encoder"


def weights_identity(init: str) -> str:
    """What results of an init depend on: the digest of its weights (a saved model, current or earlier
    format, named by its folder or JSON file; or a weights file made elsewhere), wherever they lie (a
    run restored elsewhere, an encoder put back after an archive); the init as given when it names
    no file (``scratch``, a published model's name)."""
    path = Path(init)
    if is_saved_model(model_directory(path)):
        digests = [remembered_file_digest(file) for file in weight_files(path)]
        return "blake2b:" + "+".join(digests)
    return f"blake2b:{remembered_file_digest(path)}" if path.is_file() else init


def same_weights(recorded: str, now: str) -> bool:
    """Whether an init recorded in a run (by :func:`weights_identity`, or by the folder path that
    records of earlier versions held) names the weights ``now`` (a :func:`weights_identity`) names."""
    return recorded == now or (not recorded.startswith("blake2b:") and weights_identity(recorded) == now)

"""A published model's architecture and input preprocessing travel with its weights (``model.weights``).

A weights file says nothing about the inputs its model was trained on, yet a ViT fed other
normalisation constants than its own computes other features: RETFound (Zhou et al. 2023,
``util/datasets.py``) and DINOv2 normalise with ImageNet's mean and standard deviation, RETFound-Green
(Engelmann & Bernabeu 2025) with "normalisation constants of 0.5 for all three channel means and
standard deviations" at 392 px. ``model.weights`` names the published model a weights file holds
(a key of :data:`~retinassl.models.vit_weights.KNOWN_WEIGHTS`); then

- :func:`published_model` builds its architecture: ``arch`` and ``kwargs`` from the entry (with
  ``model.arch`` set to the same architecture, ``model.kwargs`` override single arguments:
  ``pooling``, ``drop_path``...; another ``arch``, e.g. a preset's, is replaced);
- :func:`published_preprocess` sets the preprocessing's normalisation (``imagenet``, or ``meanstd``
  with the model's constants) and input size to the model's, and logs what it changed;
- :func:`with_published` applies both to a job's config (transfer experiments, ``pretrain``, ``train``);
- :func:`published_meta` is what saved models record beside the encoder (``weights``: name, size,
  mean, std), so a classifier fine-tuned from RETFound-Green is read back with 0.5 / 0.5 inputs
  (:func:`retinassl.jobs.predict.model_preprocess` reads the recorded preprocessing).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel

from retinassl.config import ModelConfig, validate
from retinassl.data.preprocess import PreprocessConfig
from retinassl.errors import ConfigError
from retinassl.models.vit_weights import KNOWN_WEIGHTS, weights_preprocess

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=BaseModel)

#: ``model.arch`` when the config does not choose one (then the published model's is taken)
DEFAULT_ARCH = ModelConfig().arch


def _known(name: str):
    if name not in KNOWN_WEIGHTS:
        raise ConfigError(f"model.weights {name!r} is not a known published model; known: "
                          f"{', '.join(sorted(KNOWN_WEIGHTS))}")
    return KNOWN_WEIGHTS[name]


def published_model(model: ModelConfig) -> ModelConfig:
    """``model`` with the architecture of ``model.weights`` (unchanged when it names none).

    When ``model.arch`` is the published model's, ``model.kwargs`` override single arguments of
    its entry (e.g. ``drop_path``); any other ``arch`` (a preset's ``resnet18``...) is replaced
    together with its ``kwargs``, and the replacement logged.

    Raises:
        ConfigError: unknown name.
    """
    if model.weights is None:
        return model
    known = _known(model.weights)
    if model.arch == known.arch:
        kwargs = {**known.kwargs, **model.kwargs}
    else:
        kwargs = dict(known.kwargs)
        if model.arch != DEFAULT_ARCH:
            log.info("model.weights %s is a %s: model.arch %s and its kwargs %s are replaced",
                     model.weights, known.arch, model.arch, model.kwargs)
    return model.model_copy(update={"arch": known.arch, "kwargs": kwargs})


def published_preprocess(model: ModelConfig, preprocess: PreprocessConfig) -> PreprocessConfig:
    """``preprocess`` with the input size and normalisation of ``model.weights`` (unchanged when it
    names none); a changed setting is logged with the value it replaces."""
    if model.weights is None:
        return preprocess
    known = _known(model.weights)
    if known.normalize == "imagenet":
        wanted: dict[str, Any] = {"normalize": "imagenet", "normalize_mean": None, "normalize_std": None}
    else:
        wanted = {"normalize": "meanstd", "normalize_mean": tuple(known.mean),
                  "normalize_std": tuple(known.std)}
    wanted["size"] = known.size
    changed = {k: (getattr(preprocess, k), v) for k, v in wanted.items() if getattr(preprocess, k) != v}
    if changed:
        log.info("model.weights %s: preprocessing %s", model.weights,
                 ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
    return PreprocessConfig.model_validate({**preprocess.model_dump(), **wanted})


def with_published(config: ConfigT) -> ConfigT:
    """A job's config (any section with ``model`` and ``preprocess``) with ``model.weights`` applied
    to both (:func:`published_model`, :func:`published_preprocess`); unchanged when it names none."""
    model = config.model  # type: ignore[attr-defined]
    if model.weights is None:
        return config
    preprocess = published_preprocess(model, config.preprocess)  # type: ignore[attr-defined]
    # validated again: the job's own checks (e.g. augmentation that needs [0, 1] intensities) see the
    # published model's normalisation, not the one it replaces
    return validate(type(config), {**dict(config), "model": published_model(model), "preprocess": preprocess},
                    origin=f"model.weights={model.weights}")


def published_meta(model: ModelConfig) -> dict[str, Any]:
    """``{"weights": {name, size, mean, std, normalize}}`` for a saved model's JSON, or ``{}``."""
    if model.weights is None:
        return {}
    _known(model.weights)
    return {"weights": weights_preprocess(model.weights)}

"""The Method contract and the method registry.

A method is one training objective (a pretext task, contrastive learning, supervised pretraining,
the patch GAN...). It owns its networks and optimizers and defines its loss on a batch; it knows
nothing about loaders, devices or distributed code, which are the engine's business
(:mod:`retinassl.engine.fit`). Its ``encoder`` attribute is the product of training.

Randomness: the engine passes a ``torch.Generator`` seeded from (run seed, batch number, rank) to
:meth:`Method.loss`; every random choice inside a loss draws from it (on the CPU), and the engine also
reseeds the global torch RNG per batch (for dropout), so a resumed run repeats exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from retinassl.config import Section, validate
from retinassl.errors import ConfigError
from retinassl.models import Encoder


class Method(nn.Module):
    """Base class of every training method.

    Subclasses define ``name``, a ``Config`` section (documented defaults), ``__init__(config,
    encoder)``, :meth:`configure_optimizers` and :meth:`loss`; optionally :meth:`after_step`,
    :meth:`divergence`, :meth:`health`, :meth:`validation_outputs` / :meth:`validation_metrics`
    and ``monitor``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[Section]] = Section
    monitor: ClassVar[tuple[str, str] | None] = None  # (metric, "max"|"min") used to keep the best state

    def __init__(self, config: Section, encoder: Encoder) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by group name; each batch steps them in this order."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss that optimizer ``group`` minimises on ``batch``, and metrics to log."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after all optimizers stepped on a batch (e.g. to update an EMA)."""

    def divergence(self) -> str | None:
        """A message when training has failed in a way the method detects itself (e.g. a
        collapsed GAN generator), else None; the engine then stops with TrainingDiverged after
        saving the weights. Checked after every step (NaN/inf losses are the engine's own check)."""
        return None

    def health(self) -> dict[str, float]:
        """Diagnostics a finished training reports beside its results (e.g. how varied a GAN
        generator's samples are); default none."""
        return {}

    def patch_logit(self) -> tuple[Encoder, nn.Linear, str] | None:
        """What a patch classifier keeps of this method: copies of ``(encoder, head giving one
        logit, input range "unit" | "tanh")``; None when the method leaves no binary patch
        classifier (:class:`~retinassl.models.patch_classifier.PatchClassifier`)."""
        return None

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Learning-rate multiplier at ``step`` of ``total_steps`` (default: constant)."""
        return 1.0

    def validation_outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-batch tensors (first dimension = batch) gathered over the validation set."""
        return {}

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from the concatenated validation outputs."""
        return {}

    def figures(self, dataset: Any, directory: Path, seed: int) -> list[Path]:
        """PNG figures a finished pretraining adds to its report (``directory``: the report's
        figures), drawn from items of its training ``dataset`` chosen with ``seed``; none by default
        (the masked autoencoder shows its reconstructions)."""
        return []


_METHODS: dict[str, type[Method]] = {}
T = TypeVar("T", bound=type[Method])


def register_method(cls: T) -> T:
    """Class decorator: register a method under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every registered method (importing :mod:`retinassl.methods` has registered them all)."""
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(method_names()) or 'none'}")
    return _METHODS[name]


def build_method(name: str, params: dict[str, Any], encoder: Encoder,
                 factory: Callable[..., Method] | None = None) -> Method:
    """Validate ``params`` against the method's Config and construct it around ``encoder``."""
    cls = method_class(name)
    config = validate(cls.Config, params, origin=f"method {name}")
    return (factory or cls)(config, encoder)


def seeded_method(model: Any, method: dict[str, Any], default_name: str, seed: int) -> tuple[Method, Any]:
    """The encoder that ``model`` (a :class:`~retinassl.config.ModelConfig`) asks for and the method
    ``method`` (its ``name`` key, else ``default_name``) built around it, with layer initialisation
    drawn from ``seed`` (the global RNG is left untouched): the same seed gives the same weights.

    Returns ``(method, initial)`` with ``initial`` the :class:`~retinassl.models.initialize.InitialEncoder`.
    """
    from retinassl.models.initialize import initial_encoder, seeded_init

    params = dict(method)
    name = params.pop("name", default_name)
    with seeded_init(seed):  # the method's own layers (heads, decoders) are seeded too
        initial = initial_encoder(model)
        return build_method(name, params, initial.encoder), initial

"""Encoder registry: every encoder is built by name with keyword arguments, so a checkpoint's JSON
(``arch`` + ``kwargs``) rebuilds it exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from retinassl.errors import ConfigError
from retinassl.models.base import Encoder

_ENCODERS: dict[str, Callable[..., Encoder]] = {}
E = TypeVar("E", bound=Callable[..., Encoder])


def register_encoder(name: str) -> Callable[[E], E]:
    """Class decorator: make ``build_encoder(name, **kwargs)`` construct the class."""

    def decorate(factory: E) -> E:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is registered twice")
        _ENCODERS[name] = factory
        return factory

    return decorate


def encoder_names() -> list[str]:
    return sorted(_ENCODERS)


def build_encoder(name: str, **kwargs: Any) -> Encoder:
    """Construct a registered encoder.

    Raises:
        ConfigError: unknown name or arguments the encoder does not accept.
    """
    if name not in _ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; known: {', '.join(encoder_names())}")
    try:
        return _ENCODERS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: {exc}") from None

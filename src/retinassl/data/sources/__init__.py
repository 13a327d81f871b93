"""Dataset sources: each turns a dataset as distributed into a validated Manifest.

``SOURCES`` maps a source name to its loader; ``load_source(name, **options)`` calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import ConfigError
from ..manifest import Manifest
from .synthetic import load_synthetic

SOURCES: dict[str, Callable[..., Manifest]] = {
    "synthetic": load_synthetic,
}


def load_source(name: str, **options: Any) -> Manifest:
    """Build the manifest of source ``name`` with its options (e.g. ``root``)."""
    if name not in SOURCES:
        raise ConfigError(f"unknown data source {name!r}; known: {', '.join(sorted(SOURCES))}")
    try:
        return SOURCES[name](**options)
    except TypeError as exc:
        raise ConfigError(f"data source {name!r}: {exc}") from None

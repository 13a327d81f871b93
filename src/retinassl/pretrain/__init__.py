"""Pretraining methods, one module and one registry entry each (importing registers them)."""

from . import supervised  # noqa: F401

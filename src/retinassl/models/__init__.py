"""Encoders (one interface for all), heads, and the registry that builds them by name."""

from .base import Encoder
from .registry import build_encoder, encoder_names, register_encoder

# Importing the modules registers their encoders.
from . import convnet, resnet, unet  # noqa: E402,F401  isort: skip
from . import vit  # noqa: E402,F401  isort: skip

__all__ = ["Encoder", "build_encoder", "encoder_names", "register_encoder"]

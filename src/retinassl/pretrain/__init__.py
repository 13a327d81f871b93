"""Pretraining methods, one module and one registry entry each (importing registers them)."""

from . import supervised  # noqa: F401
from . import autoencoder, inpainting, offset_heatmap, relative_position, rotation, simclr  # noqa: F401
from . import cross_modal  # noqa: F401
from ..oct import layerseg  # noqa: F401  (OCT layer segmentation, DeepRT's first stage)

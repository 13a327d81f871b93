"""Full-image vessel probabilities by sliding-window inference, mapped back to the original pixels.

Windows of ``roi_size`` overlap by ``overlap`` and are blended with Gaussian weights (MONAI's
``sliding_window_inference`` with ``mode="gaussian"``), so window borders, where a network sees the
least context, weigh least and the map has no seams. The cached (cropped, padded, resized) image's
probabilities are mapped back through the image's :class:`~retinassl.data.field_of_view.Geometry` to
the original file's pixel grid, so metrics are computed against the original annotation files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from PIL import Image
from pydantic import Field
from torch import nn

from retinassl.atomic import atomic_path
from retinassl.config import Section
from retinassl.data.field_of_view import Geometry


class InferenceConfig(Section):
    """Sliding-window inference.

    Attributes:
        roi_size: window side (pixels of the cached image).
        overlap: fraction of a window shared with its neighbour.
        sw_batch_size: windows per forward pass.
        blend: ``gaussian`` (weights fall off towards window borders) or ``constant``.
        sigma_scale: Gaussian sigma as a fraction of the window side.
        threshold: probability at or above which a pixel is a vessel.
        precision: ``auto`` (bf16 autocast where the CPU supports it), ``bf16`` or ``32``.
    """

    roi_size: int = Field(128, ge=8)
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(8, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(0.125, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1)
    precision: Literal["auto", "bf16", "32"] = "auto"


def _autocast(precision: str) -> torch.autocast:
    from retinassl.hardware import cpu_supports_bf16

    enabled = precision == "bf16" or (precision == "auto" and cpu_supports_bf16())
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def sliding_window_probabilities(model: nn.Module, images: torch.Tensor,
                                 config: InferenceConfig = InferenceConfig()) -> torch.Tensor:
    """Blended sigmoid probabilities of a full image.

    Args:
        model: ``(N, C, r, r)`` -> logits ``(N, K, r, r)`` (in eval mode).
        images: ``(B, C, H, W)`` (or one ``(C, H, W)`` image).
        config: window size, overlap, blending, precision.

    Returns:
        ``(B, K, H, W)`` float32 probabilities (``(K, H, W)`` for one image).
    """
    single = images.ndim == 3
    x = images[None] if single else images

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with _autocast(config.precision):
            logits = model(window)
        return torch.sigmoid(logits.float())

    roi = (min(config.roi_size, x.shape[-2]), min(config.roi_size, x.shape[-1]))
    out = sliding_window_inference(x.float(), roi, config.sw_batch_size, predictor,
                                   overlap=config.overlap, mode=config.blend,
                                   sigma_scale=config.sigma_scale, padding_mode="constant", cval=0.0)
    out = torch.as_tensor(out).float()
    return out[0] if single else out


def to_original(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map a ``(S, S)`` map of the cached image back onto the original ``(H, W)`` pixel grid.

    The inverse of :func:`~retinassl.data.field_of_view.apply_geometry`: resize ``S`` -> ``side``
    (bilinear), remove the square padding, place the crop at its box; zero outside the box.
    """
    array = np.asarray(array, dtype=np.float32)
    size = geometry.size
    if array.shape != (size, size):
        raise ValueError(f"map is {array.shape}, the geometry expects ({size}, {size})")
    side = geometry.side
    canvas = array if side == size else cv2.resize(array, (side, side), interpolation=cv2.INTER_LINEAR)
    x0, y0, x1, y1 = geometry.box
    width, height = geometry.original_size
    out = np.zeros((height, width), dtype=np.float32)
    h, w = min(y1 - y0, side - geometry.pad_y), min(x1 - x0, side - geometry.pad_x)
    out[y0:y0 + h, x0:x0 + w] = canvas[geometry.pad_y:geometry.pad_y + h, geometry.pad_x:geometry.pad_x + w]
    return out


def save_probability_png(path: str | Path, prob: np.ndarray) -> Path:
    """Probabilities in [0, 1] as an 8-bit grayscale PNG (value = round(255 * p))."""
    path = Path(path)
    pixels = np.clip(np.rint(np.asarray(prob, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return path


def save_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """A binary mask as a 1-bit PNG (0 / 255 when read as 8-bit)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(mask, dtype=bool)).save(tmp, format="PNG")
    return path

"""Vessel-segmentation overlays: image, truth, probability and a colour-coded error map side by side.

Error colours (inside the FOV): true positives white, false positives red, false negatives blue,
true negatives the darkened image; outside the FOV is dark grey.
"""

from __future__ import annotations

import numpy as np

TP_COLOUR = (255, 255, 255)
FP_COLOUR = (230, 40, 40)
FN_COLOUR = (40, 110, 255)
OUTSIDE_GREY = 40


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: TP white, FP red, FN blue over the darkened image; grey outside the FOV."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    out = (rgb.astype(np.float32) * 0.35).astype(np.uint8)
    truth, pred, fov = (np.asarray(a, dtype=bool) for a in (truth, pred, fov))
    out[~fov] = OUTSIDE_GREY
    out[fov & truth & pred] = TP_COLOUR
    out[fov & ~truth & pred] = FP_COLOUR
    out[fov & truth & ~pred] = FN_COLOUR
    return out


def vessel_panel(image: np.ndarray, truth: np.ndarray, prob: np.ndarray, fov: np.ndarray,
                 threshold: float = 0.5, max_side: int = 480) -> np.ndarray:
    """Image | truth | probability | errors, each ``(H, W)`` panel downscaled to ``max_side``.

    Args:
        image: ``(H, W, 3)`` uint8. truth, fov: ``(H, W)`` bool. prob: ``(H, W)`` in [0, 1].

    Returns:
        ``(h, 4 w + 3 gaps, 3)`` uint8.
    """
    import cv2

    grey = lambda m: np.repeat((np.asarray(m, dtype=np.float32) * 255).astype(np.uint8)[..., None], 3, 2)  # noqa: E731
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    panels = [rgb, grey(truth), grey(np.clip(prob, 0, 1)), error_map(rgb, truth, prob >= threshold, fov)]
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        panels = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in panels]
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1)

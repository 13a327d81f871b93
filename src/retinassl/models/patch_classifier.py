"""The patch classifier every patch method leaves behind: an encoder and one linear logit, saved
as a model of kind ``patch-classifier`` (:mod:`retinassl.io.saved_model`).

The SSL-GAN's K = 2 head folds into one logit ``l_1 - l_0`` (:meth:`SSLGAN.folded_head`) taken
from its exponential moving average; the supervised baselines' binary head is already one logit.
So evaluation, heatmaps and the command line treat SSL-GAN, ConvNet and ResNet34 alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from retinassl.errors import ConfigError
from retinassl.metrics.image_score import IMAGE_SCORES, ImageScore
from retinassl.io.saved_model import load_state_strict, module_state, read_model, save_model
from retinassl.models.base import Encoder
from retinassl.models.checkpoint import encoder_meta
from retinassl.models.registry import build_encoder


class PatchClassifier(nn.Module):
    """``(B, C, p, p)`` normalised patches -> ``(B,)`` patch logits.

    Args:
        encoder: the trunk (pooled features ``(B, F)``).
        head: ``Linear(F, 1)``.
        input_range: ``unit`` (patches are fed as normalised) or ``tanh`` (mapped from [0, 1] to
            [-1, 1] first, as the SSL-GAN's discriminator was trained).
        patch_size: the side the classifier was trained on.
        grid: the patch grid of its images.
        image_score: how its patch logits make an image's score
            (:func:`retinassl.metrics.image_score.image_scores`: ``sum`` or ``tissue``).
    """

    def __init__(self, encoder: Encoder, head: nn.Linear, input_range: Literal["unit", "tanh"],
                 patch_size: int, grid: int = 8, image_score: ImageScore = "sum") -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.input_range = input_range
        self.patch_size = patch_size
        self.grid = grid
        if image_score not in IMAGE_SCORES:
            raise ConfigError(f"patch classifier: image_score {image_score!r}; expected one of "
                              f"{', '.join(IMAGE_SCORES)}")
        self.image_score = image_score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_range == "tanh":
            x = x * 2 - 1
        return self.head(self.encoder(x))[:, 0]

    @classmethod
    def from_method(cls, method: nn.Module, patch_size: int, grid: int = 8,
                    image_score: ImageScore = "sum") -> PatchClassifier:
        """The classifier of a trained ``ssl-gan`` (EMA weights) or binary ``supervised`` method."""
        classifier = cls.of_method(method, patch_size, grid, image_score)
        if classifier is None:
            raise ValueError(f"method {getattr(method, 'name', type(method).__name__)!r} leaves no "
                             f"binary patch classifier")
        return classifier

    @classmethod
    def of_method(cls, method: nn.Module, patch_size: int, grid: int = 8,
                  image_score: ImageScore = "sum") -> PatchClassifier | None:
        """:meth:`from_method`, or None for a method that leaves no binary patch classifier."""
        parts = method.patch_logit()
        if parts is None:
            return None
        encoder, head, input_range = parts
        classifier = cls(encoder.to(memory_format=torch.contiguous_format), head, input_range,  # type: ignore[arg-type]
                         patch_size, grid, image_score)
        classifier.requires_grad_(False)
        return classifier.eval()

    def save(self, directory: str | Path, *, arch: str, kwargs: dict[str, Any], method: str,
             preprocess: dict[str, Any], config: dict[str, Any] | None = None,
             data_fingerprint: str | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Save as a model of kind ``patch-classifier`` (weights ``encoder.*`` and ``head.*``);
        ``extra``: more JSON keys (e.g. the ``operating_point`` chosen on validation images)."""
        extra = {"patch_classifier": {"input_range": self.input_range, "patch_size": self.patch_size,
                                      "grid": self.grid, "image_score": self.image_score}, **(extra or {})}
        meta = encoder_meta(self.encoder, arch=arch, kwargs=kwargs, preprocess=preprocess, method=method,
                            config=config, data_fingerprint=data_fingerprint, extra=extra)
        return save_model(directory, "patch-classifier", module_state(self), meta)

    @classmethod
    def load(cls, directory: str | Path) -> tuple[PatchClassifier, dict[str, Any]]:
        """Rebuild a saved classifier; returns it (eval mode) and the checkpoint's metadata."""
        saved = read_model(directory, kinds=("patch-classifier",),
                           hint="a patch classifier is saved by `retinassl semisup train` into <run>/classifier")
        meta = saved.meta
        info = meta["patch_classifier"]
        encoder = build_encoder(meta["arch"], **meta["kwargs"])
        classifier = cls(encoder, nn.Linear(encoder.num_features, 1), info["input_range"],
                         int(info["patch_size"]), int(info["grid"]),
                         info.get("image_score", "sum"))  # saved before the rule existed: the paper's sum
        load_state_strict(classifier, saved.state, saved.weights_file)
        classifier.requires_grad_(False)
        return classifier.eval(), meta


@torch.no_grad()
def predict_cells(classifier: nn.Module, cells: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Logits ``(N,)`` of ``(N, C, p, p)`` cells, in batches."""
    out = [classifier(cells[i:i + batch_size]).float() for i in range(0, cells.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

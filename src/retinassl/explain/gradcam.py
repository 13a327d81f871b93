"""Grad-CAM of our encoders + linear head, through MONAI's ``GradCAM``.

Selvaraju et al. 2017: "Grad-CAM uses the gradient information flowing into the last
convolutional layer of the CNN to assign importance values to each neuron for a particular
decision of interest." Jang et al. 2024 use it "to enhance the interpretability of the predicted
results for each fundus image".

Every encoder has the same interface (``forward_features`` gives the deepest map), so one wrapper,
:class:`CamModel`, exposes that map as a named layer (``features``, an ``nn.Identity``) for
MONAI's hooks, whatever the architecture. For a ViT the map is its patch tokens entering the last
block, on the patch grid (class and register tokens dropped), and the head reads the encoder's own
pooled embedding (class token or mean token; :mod:`retinassl.explain.vit_attention`). The
explained score is the model's single logit for binary tasks, the log-odds of ``P(class >=
positive_from)`` for graded tasks with a ``positive_from`` (e.g. referable DR from a DR-grade
model), and otherwise the logit of the requested (default: predicted) class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from retinassl.data.cache import PreparedData
from retinassl.data.datasets import ImageDataset
from retinassl.errors import ConfigError
from retinassl.explain.vit_attention import attention_rollout, vit_pooled_through
from retinassl.models import Encoder
from retinassl.models.vit import VisionTransformer
from retinassl.figures.heatmap import overlay

TARGET_LAYER = "features"
GRADCAM_ALPHA = 0.5  # a Grad-CAM overlay's opacity at heat 1
ExplainMethod = Literal["gradcam", "rollout"]


class CamModel(nn.Module):
    """``(B, C, H, W)`` -> scores ``(B, K)``, with the encoder's deepest map passing through the
    ``features`` layer (for Grad-CAM hooks).

    Args:
        encoder: the encoder.
        head: maps the pooled ``(B, num_features)`` embedding to logits.
        kind: ``binary`` (one logit), ``multiclass`` or ``multilabel``.
        positive_from: for ``multiclass``, explain ``log P(y >= t) - log P(y < t)`` (one output).
    """

    def __init__(self, encoder: Encoder, head: nn.Module, kind: str = "binary",
                 positive_from: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.features = nn.Identity()
        self.kind = kind
        self.positive_from = positive_from

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, VisionTransformer):  # the patch-token map (explain/vit_attention.py)
            logits = self.head(vit_pooled_through(self.encoder, x, self.features))
        else:
            logits = self.head(self.features(self.encoder.forward_features(x)).mean(dim=(2, 3)))
        if self.kind == "multiclass" and self.positive_from is not None:
            logp = torch.log_softmax(logits.float(), dim=1)
            t = self.positive_from
            return (torch.logsumexp(logp[:, t:], 1) - torch.logsumexp(logp[:, :t], 1))[:, None]
        return logits


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of ``(B, 1, H, W)`` to [0, 1] (a constant map becomes 0)."""
    flat = maps.detach().reshape(maps.shape[0], -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp_min(1e-12)
    return scaled.reshape(maps.shape)


def grad_cam(model: CamModel, images: torch.Tensor, class_idx: int | None = None) -> np.ndarray:
    """Grad-CAM maps ``(B, H, W)`` in [0, 1] (each map min-max scaled, 1 = most important), at the
    input resolution (MONAI's bilinear upsampling).

    Args:
        model: the wrapped classifier (its weights are not changed; gradients are cleared).
        images: ``(B, C, H, W)`` normalised inputs.
        class_idx: output explained (default: 0 for a one-output model, else the arg-max).
    """
    from monai.visualize import GradCAM

    # MONAI's default post-processing maps (min, max) to (1, 0), i.e. flips the map; scale it
    # so that 1 is the most important place instead.
    cam = GradCAM(nn_module=model, target_layers=TARGET_LAYER, postprocessing=_unit_range)
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            outputs = 1 if model.kind == "binary" or model.positive_from is not None else None
            index = class_idx if class_idx is not None else (0 if outputs == 1 else None)
            maps = cam(images.float(), class_idx=index)
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
            p.grad = None
        model.train(was_training)
    return maps[:, 0].detach().numpy()


def classifier_cam_model(model_dir: str | Path) -> tuple[CamModel, object]:
    """A :class:`CamModel` around a fine-tuned classifier saved by
    :func:`~retinassl.jobs.finetune.save_classifier`; returns ``(model, task)``."""
    from retinassl.jobs.finetune import load_classifier

    method, task, _ = load_classifier(model_dir)
    return cam_model(method, task), task


def cam_model(method: nn.Module, task: object) -> CamModel:
    """A :class:`CamModel` (eval mode) around a loaded classifier's ``encoder`` and ``head`` for
    its :class:`~retinassl.metrics.tasks.TaskSpec` (graded tasks explain ``P(class >= positive_from)``)."""
    kind = task.kind  # type: ignore[attr-defined]
    model = CamModel(method.encoder, method.head, kind,  # type: ignore[arg-type]
                     task.positive_from if kind == "multiclass" else None)  # type: ignore[attr-defined]
    return model.eval()


def explanation_map(model: CamModel, x: torch.Tensor, method: ExplainMethod = "gradcam") -> np.ndarray:
    """The ``(H, W)`` map in [0, 1] of one image ``x`` ``(1, C, H, W)``: Grad-CAM of the explained
    output, or (``rollout``, ViT encoders only) the attention rollout of the pooled token
    (:func:`~retinassl.explain.vit_attention.attention_rollout`; the same for every output).

    Raises:
        ConfigError: ``rollout`` for an encoder that is not a ViT.
    """
    if method == "rollout":
        if not isinstance(model.encoder, VisionTransformer):
            raise ConfigError(f"attention rollout needs a ViT encoder; this classifier's is a "
                              f"{type(model.encoder).__name__} (use Grad-CAM)")
        return attention_rollout(model.encoder.eval(), x.float())[0].numpy()
    return grad_cam(model, x)[0]


def explanation_maps(model: CamModel, prepared: PreparedData, rows: Sequence[int],
                     method: ExplainMethod = "gradcam") -> list[tuple[np.ndarray, float]]:
    """``(map (S, S) in [0, 1], score)`` of each row on the image the model saw (score: the
    explained output; the map: :func:`explanation_map` by ``method``)."""
    dataset = ImageDataset(prepared)
    out = []
    for row in rows:
        x = dataset[int(row)]["image"][None]
        with torch.no_grad():
            score = float(model.eval()(x)[0, 0])
        out.append((explanation_map(model, x, method), score))
    return out


def gradcam_overlays(model: CamModel, prepared: PreparedData, rows: Sequence[int],
                     alpha: float = GRADCAM_ALPHA, method: ExplainMethod = "gradcam") -> list[tuple[np.ndarray, float]]:
    """``(overlay (S, S, 3) uint8, score)`` of each row (:func:`explanation_maps` drawn on the
    image the model saw)."""
    return [(overlay(np.asarray(prepared.entries[int(row)].image()), heat, sigma_fraction=0.0, alpha=alpha), score)
            for row, (heat, score) in zip(rows, explanation_maps(model, prepared, rows, method))]


def gradcam_gallery(model_dir: str | Path, prepared: PreparedData, rows: Sequence[int], path: str | Path,
                    title: str = "", method: ExplainMethod = "gradcam") -> Path:
    """One PNG with the Grad-CAM (or attention-rollout) overlay of each row (label and score in each
    caption)."""
    from retinassl.figures.plots import plt, save_figure

    model, task = classifier_cam_model(model_dir)
    items = gradcam_overlays(model, prepared, rows, method=method)
    labels = task.targets(prepared.manifest)
    ids = prepared.manifest.frame["id"].astype(str).to_numpy()
    n = max(1, len(items))
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.6), squeeze=False)
    for ax, row, (art, score) in zip(axes[0], rows, items):
        ax.imshow(art)
        label = labels[int(row)]
        ax.set_title(f"{ids[int(row)][-12:]}\nlabel {label if np.ndim(label) == 0 else list(label)}, "
                     f"out {score:+.2f}", fontsize=7)
        ax.axis("off")
    for ax in axes[0][len(items):]:
        ax.axis("off")
    if title:
        fig.suptitle(f"{'Attention rollout' if method == 'rollout' else 'Grad-CAM'}: {title}", fontsize=9)
    return save_figure(fig, path)

"""OCT layer segmentation: a U-Net on B-scans, trained through the engine, and its inference.

DeepRT's first stage (Holmberg et al. 2020): "1,009 annotated OCT B-scans train a layer
segmentation" of the retina between the inner limiting membrane (ILM) and Bruch's membrane (BM);
the segmented volumes then give retinal-thickness maps. Here the network is
:class:`~retinassl.models.segmentation.UNet` over any registered encoder (default: the ``unet``
contracting path, one input channel); it predicts the ``K + 1`` regions between ``K`` annotated
boundaries (``("ILM", "BM")`` by default; any ordered subset of the annotated boundaries, e.g. all ten
synthetic ones), trained with cross-entropy + soft Dice on B-scans resized to ``input_size``.
Boundary rows come back through :func:`~retinassl.oct.boundaries.extract_boundaries` (continuous
across A-scans, holes interpolated) and are rescaled to the B-scan's own grid.

A trained model is a saved model of kind ``layer-model`` (:mod:`retinassl.io.saved_model`: all U-Net
weights; its JSON has the encoder arch and arguments, boundary names, input size). Its encoder is
reusable like any pretrained encoder (``model.init`` = the model's folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset

from retinassl.io.saved_model import load_state_strict, module_state, read_model, save_model
from retinassl.models.checkpoint import encoder_meta
from retinassl.config import Section
from retinassl.errors import DataError
from retinassl.methods.base import Method, register_method
from retinassl.models import Encoder, build_encoder
from retinassl.models.segmentation import UNet, UNetDecoder, segment
from retinassl.oct.boundaries import extract_boundaries, rescale_rows
from retinassl.oct.layers import IGNORE_LABEL, boundaries_to_labels, missing_boundaries
from retinassl.oct.volume import OCTVolume
from retinassl.losses.segmentation import masked_dice_loss
from retinassl.metrics.segmentation import region_dice

# -- losses and metrics (tensors in, tensors out) -------------------------------------------------
UNRESOLVED_LABEL = -2
"""Region label of a pixel known to lie between the first and the last boundary without knowing
which inner region (pseudo-labels with only ILM and BM for a model of more boundaries)."""


def partial_layer_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and soft Dice when some pixels are :data:`UNRESOLVED_LABEL`.

    The ``K - 1`` inner regions are merged into one (their probabilities summed: ``log sum_c p_c``
    over ``c = 1..K-1``), so the loss depends on the inner regions only through that sum: where the
    inner boundaries lie carries no gradient, only the first and last boundary are trained. Exact
    labels ``0..K`` keep their own log-probability in the cross-entropy; the Dice is over the three
    merged regions (above the first boundary, between, below the last). :data:`IGNORE_LABEL`
    pixels carry nothing.

    Args:
        logits: ``(B, K + 1, H, W)``; labels: ``(B, H, W)`` in ``0..K``, -1 or -2.

    Returns:
        ``(cross_entropy, dice_loss)`` scalars.
    """
    c = logits.shape[1]
    if c < 3:
        raise ValueError(f"unresolved pixels need at least two boundaries (3 regions), got {c} regions")
    logp = torch.log_softmax(logits.float(), dim=1)
    inner = torch.logsumexp(logp[:, 1:c - 1], dim=1)                              # (B, H, W)
    exact = logp.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    picked = torch.where(labels == UNRESOLVED_LABEL, inner, exact)
    valid = (labels >= 0) | (labels == UNRESOLVED_LABEL)
    ce = -(picked * valid).sum() / valid.sum().clamp(min=1)
    merged = torch.stack([logp[:, 0], inner, logp[:, c - 1]], dim=1)            # log-probabilities
    m_labels = torch.where(labels == UNRESOLVED_LABEL, torch.ones_like(labels),
                           torch.where(labels == c - 1, torch.full_like(labels, 2),
                                       torch.where(labels > 0, torch.ones_like(labels), labels)))
    return ce, masked_dice_loss(merged, m_labels)


# -- data -----------------------------------------------------------------------------------------
def bscan_input(bscan: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A B-scan ``(D, W)`` as network input ``(H, W')`` float32 in [0, ~1] at ``size = (H, W')``:
    uint8 divided by 255 (other types by their 99.9th percentile), area-resized."""
    x = np.asarray(bscan)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        top = float(np.percentile(x, 99.9)) or 1.0
        x = np.clip(x / top, 0, 1.5)
    h, w = size
    if x.shape != (h, w):
        interp = cv2.INTER_AREA if x.shape[0] >= h and x.shape[1] >= w else cv2.INTER_LINEAR
        x = cv2.resize(x, (w, h), interpolation=interp)
    return x


class BScanDataset(Dataset):
    """B-scans with region labels from their boundary rows, at the model's input size.

    Args:
        bscans: ``(N, D, W)`` or a list of ``(D, W)`` arrays.
        boundaries: per B-scan ``(K, W)`` rows (NaN = unannotated column, ignored in the loss).
        size: ``(H, W)`` network input size.

    Items: ``image`` ``(1, H, W)`` float32, ``label`` ``(H, W)`` int64 (``-1`` = ignore),
    ``index``.
    """

    def __init__(self, bscans: Sequence[np.ndarray], boundaries: Sequence[np.ndarray],
                 size: tuple[int, int]) -> None:
        if len(bscans) != len(boundaries):
            raise ValueError(f"{len(bscans)} B-scans but {len(boundaries)} boundary sets")
        self.size = (int(size[0]), int(size[1]))
        self.images = np.stack([bscan_input(b, self.size).astype(np.float16) for b in bscans]) \
            if len(bscans) else np.zeros((0,) + self.size, np.float16)
        self.rows = [rescale_rows(b, np.asarray(s).shape, self.size)
                     for s, b in zip(bscans, boundaries)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x = self.images[index].astype(np.float32)
        labels = boundaries_to_labels(self.rows[index], self.size[0])
        return {"image": torch.from_numpy(x)[None], "label": torch.from_numpy(labels), "index": index}


def training_bscans(volumes: Sequence[OCTVolume], boundaries: Sequence[str],
                    max_bscans: int | None = None, seed: int = 0,
                    min_annotated: float = 0.5) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The annotated B-scans of ``volumes`` and their ``(K, W)`` boundary rows.

    B-scans with fewer than ``min_annotated`` of their A-scans annotated for every boundary are
    skipped; ``max_bscans`` draws that many at random (seeded) from the rest.

    Raises:
        DataError: a volume lacks one of ``boundaries`` entirely (naming its file).
    """
    images, rows = [], []
    for volume in volumes:
        missing = missing_boundaries(volume.layers, tuple(boundaries))
        if missing:
            raise DataError(f"the segmentation lacks the boundaries {missing} (has "
                            f"{sorted(volume.layers) or 'none'})", path=volume.source or None)
        stack = np.stack([volume.layers[name] for name in boundaries])      # (K, N, W)
        for i in range(volume.shape[0]):
            r = stack[:, i]
            if np.isfinite(r).all(axis=0).mean() >= min_annotated:
                images.append(volume.bscans[i])
                rows.append(r)
    if max_bscans is not None and len(images) > max_bscans:
        pick = np.sort(np.random.default_rng(seed).choice(len(images), max_bscans, replace=False))
        images = [images[i] for i in pick]
        rows = [rows[i] for i in pick]
    return images, rows


# -- the method -----------------------------------------------------------------------------------
class LayerSegConfig(Section):
    """Layer-segmentation training settings.

    Attributes:
        boundaries: boundary names, top to bottom (``K``; the network predicts ``K + 1`` regions).
        lr: AdamW learning rate; weight_decay: AdamW weight decay.
        dice_weight: weight of the soft Dice loss added to the cross-entropy.
        flip: random left-right flips (a B-scan mirrored is still a B-scan).
        intensity: random gain and gamma change of up to this fraction.
        decoder_channels: U-Net decoder widths (default: the encoder's, symmetric).
    """

    boundaries: tuple[str, ...] = ("ILM", "BM")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    flip: bool = True
    intensity: float = Field(0.15, ge=0, lt=1)
    decoder_channels: tuple[int, ...] | None = None


@register_method
class LayerSegmentation(Method):
    """U-Net region segmentation of B-scans (see the module docstring). Batches: ``image``
    ``(B, 1, H, W)``, ``label`` ``(B, H, W)``."""

    name = "oct-layers"
    Config = LayerSegConfig
    monitor = ("dice", "max")

    def __init__(self, config: LayerSegConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if len(config.boundaries) < 1:
            raise ValueError("at least one boundary is needed")
        self.decoder = UNetDecoder(encoder, len(config.boundaries) + 1, config.decoder_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> region logits ``(B, K + 1, H, W)``."""
        return segment(self.encoder, self.decoder, x)

    def network(self) -> UNet:
        """The encoder and decoder as one U-Net (sharing these modules)."""
        return UNet(self.encoder, decoder=self.decoder)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": torch.optim.AdamW(self.parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)}

    def lr_factor(self, step: int, total_steps: int) -> float:
        warmup = max(1, total_steps // 20)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + float(np.cos(np.pi * min(1.0, progress))))

    def _augment(self, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        if self.config.flip:
            flip = torch.rand(b, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
        a = self.config.intensity
        if a > 0:
            gain = 1 + a * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
            gamma = 1 + a * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
            x = x.clamp(min=0) ** gamma * gain
        return x, y

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = self._augment(batch["image"], batch["label"], generator)
        logits = self.forward(x).float()
        if bool((y == UNRESOLVED_LABEL).any()):
            ce, dice = partial_layer_losses(logits, y)
        else:
            ce = F.cross_entropy(logits, y, ignore_index=IGNORE_LABEL)
            dice = masked_dice_loss(logits, y)
        return ce + self.config.dice_weight * dice, {"ce": float(ce.detach()), "dice_loss": float(dice.detach())}

    def validation_outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pred = self.forward(batch["image"]).argmax(dim=1)
        k = len(self.config.boundaries) + 1
        return {"dice": torch.stack([region_dice(p, t, k) for p, t in zip(pred, batch["label"])])}

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        per_class = torch.nanmean(outputs["dice"], dim=0)
        inner = per_class[1:-1]                     # the retinal layers (not vitreous / choroid)
        return {"dice": float(torch.nanmean(inner if len(inner) else per_class))}


# -- a trained model ------------------------------------------------------------------------------
@dataclass
class LayerModel:
    """A trained layer-segmentation network and what it needs at inference."""

    net: UNet
    boundaries: tuple[str, ...]
    input_size: tuple[int, int]
    arch: str
    encoder_kwargs: dict[str, Any]
    decoder_channels: tuple[int, ...] | None = None

    @torch.no_grad()
    def probabilities(self, bscans: np.ndarray, batch_size: int = 16,
                      bf16: bool | None = None) -> np.ndarray:
        """``(N, D, W)`` B-scans -> region probabilities ``(N, K + 1, H, W)`` at the input size.

        ``bf16``: bfloat16 autocast on the CPU (default: where the processor supports it).
        """
        from retinassl.hardware import cpu_supports_bf16

        self.net.eval()
        use_bf16 = cpu_supports_bf16() if bf16 is None else bf16
        out = []
        for s in range(0, len(bscans), batch_size):
            x = np.stack([bscan_input(b, self.input_size) for b in bscans[s:s + batch_size]])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = self.net(torch.from_numpy(x)[:, None]).float()
            out.append(torch.softmax(logits, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.boundaries) + 1) + self.input_size)

    def segment(self, volume: OCTVolume, batch_size: int = 16, bf16: bool | None = None,
                **extract: Any) -> dict[str, np.ndarray]:
        """Boundary rows ``name -> (n_bscans, width)`` in the volume's B-scan grid (NaN =
        undefined). ``extract``: options of :func:`~retinassl.oct.boundaries.extract_boundaries`."""
        rows = self.segment_bscans(volume.bscans, batch_size, bf16, **extract)
        return {name: rows[:, k] for k, name in enumerate(self.boundaries)}

    def segment_bscans(self, bscans: np.ndarray, batch_size: int = 16, bf16: bool | None = None,
                       **extract: Any) -> np.ndarray:
        """``(N, D, W)`` B-scans -> boundary rows ``(N, K, W)`` in their own grid (NaN = undefined)."""
        _, depth, width = np.asarray(bscans).shape
        probs = self.probabilities(bscans, batch_size, bf16)
        rows = extract_boundaries(probs, **extract)                          # (N, K, H, W')
        return rescale_rows(rows, self.input_size, (depth, width))

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Save as a model of kind ``layer-model`` (the U-Net's weights; see the module docstring)."""
        meta = {**encoder_meta(self.net.encoder, arch=self.arch, kwargs=self.encoder_kwargs,
                               method=LayerSegmentation.name,
                               preprocess={"input": "oct-bscan", "size": list(self.input_size)}),
                "boundaries": list(self.boundaries), "input_size": list(self.input_size),
                "decoder_channels": None if self.decoder_channels is None else list(self.decoder_channels),
                **(extra or {})}
        return save_model(directory, "layer-model", module_state(self.net), meta)


def load_layer_model(directory: str | Path) -> LayerModel:
    """Rebuild a saved :class:`LayerModel` (weights loaded strictly)."""
    saved = read_model(directory, kinds=("layer-model",),
                       hint="a layer model is saved by `retinassl oct train-seg` into <run>/layer_model")
    meta = saved.meta
    encoder = build_encoder(meta["arch"], **meta["kwargs"])
    net = UNet(encoder, len(meta["boundaries"]) + 1, meta["decoder_channels"])
    load_state_strict(net, saved.state, saved.weights_file)
    net.eval()
    return LayerModel(net, tuple(meta["boundaries"]), tuple(meta["input_size"]), meta["arch"],
                      dict(meta["kwargs"]), meta["decoder_channels"] and tuple(meta["decoder_channels"]))
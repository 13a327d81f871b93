"""Cross-modal pretraining: predict the OCT retinal-thickness map from the fundus image alone.

Holmberg et al., "Self-supervised retinal thickness prediction enables deep learning from unlabelled
data to boost classification of diabetic retinopathy" (Nat Mach Intell 2020, DeepRT): "We
demonstrate the utility of the scheme by accurately predicting retinal thickness measurements based
on optical coherence tomography from simple infrared fundus images. Subsequently, learned
representations outperformed advanced classifiers on a separate diabetic retinopathy classification
task in a scenario of scarce training data."

The network is an encoder (any registered one; it is the product, saved like every pretrained
encoder) and a small U-Net decoder (:class:`~retinassl.models.segmentation.UNetDecoder`, one output
channel) that regresses the thickness map registered to the input image
(:class:`~retinassl.oct.paired.ThicknessPairs`). The loss is taken only where the target is defined
(``mask``): outside the scanned area, where the map is undefined, and on maps that failed the
quality check, nothing is learnt. Targets are divided by ``scale_um`` so that the network works with
numbers of order one; by default the per-pixel mean training map is added to the output
(``start: mean-map``, set by the run driver), so the network learns each eye's deviation from the
average map.

Batches: ``image`` ``(B, C, H, W)``, ``target`` ``(B, 1, H, W)`` micrometres, ``mask``
``(B, 1, H, W)`` in {0, 1}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from retinassl.config import Section
from retinassl.data import augment
from retinassl.io.saved_model import load_state_strict, read_model
from retinassl.methods.base import Method, build_method, register_method
from retinassl.models import Encoder, build_encoder
from retinassl.models.segmentation import UNetDecoder, segment
from retinassl.methods.pretext_base import warmup_cosine
from retinassl.losses.regression import masked_regression_loss


class CrossModalConfig(Section):
    """Fundus-to-thickness regression settings.

    Attributes:
        lr: AdamW learning rate; weight_decay: AdamW weight decay.
        schedule: ``cosine`` (5 % warm-up then cosine decay) or ``constant``.
        loss: ``l1`` (default), ``mse`` or ``huber``, on targets in units of ``scale_um``.
        scale_um: micrometres per network output unit.
        flip: random horizontal flips of image and target together (a mirrored right eye is a
            plausible left eye with its mirrored map).
        jitter: brightness/contrast/saturation jitter of the image only.
        decoder_channels: widths of the decoder blocks (shallowest first; default: the encoder's).
        start: where the regression starts (set by the run driver from the training targets):
            ``mean-map`` (the per-pixel mean training map is added to every prediction, so the
            network learns each eye's deviation from it), ``mean`` (the output bias is the mean
            training thickness) or ``zero``.
    """

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    loss: Literal["l1", "mse", "huber"] = "l1"
    scale_um: float = Field(100.0, gt=0)
    flip: bool = True
    jitter: float = Field(0.1, ge=0, lt=1)
    decoder_channels: tuple[int, ...] | None = None
    start: Literal["mean-map", "mean", "zero"] = "mean-map"


@register_method
class CrossModal(Method):
    """Encoder + U-Net decoder regressing thickness maps (see the module docstring)."""

    name = "cross-modal"
    Config = CrossModalConfig
    monitor = ("mae_um", "min")

    def __init__(self, config: CrossModalConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.decoder = UNetDecoder(encoder, 1, config.decoder_channels)
        self.register_buffer("prior", torch.zeros(0))        # (1, 1, H, W) in scale_um units

    def start_from(self, mean_um: float, mean_map_um: torch.Tensor | None = None) -> None:
        """Start the regression at the training targets' mean (``config.start``): the output bias
        becomes ``mean_um``, or (``mean-map``) ``mean_map_um`` ``(H, W)`` micrometres is added to
        every prediction and the network learns the deviation from it."""
        scale = self.config.scale_um
        with torch.no_grad():
            if self.config.start == "mean":
                self.decoder.head.bias.fill_(mean_um / scale)
            elif self.config.start == "mean-map" and mean_map_um is not None:
                self.prior = (mean_map_um.float() / scale)[None, None].clone()
                # a zero output layer: the untrained network predicts exactly the prior, in train
                # and eval mode alike (whatever the batch-norm statistics)
                self.decoder.head.weight.zero_()
                self.decoder.head.bias.zero_()

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """Network output in units of ``scale_um``, prior included."""
        y = segment(self.encoder, self.decoder, x).float()
        if self.prior.numel():
            prior = self.prior if self.prior.shape[-2:] == y.shape[-2:] else \
                F.interpolate(self.prior, size=y.shape[-2:], mode="bilinear", align_corners=False)
            y = y + prior
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> predicted thickness ``(B, 1, H, W)`` in micrometres."""
        return self._predict(x) * self.config.scale_um

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": torch.optim.AdamW(self.parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)}

    def lr_factor(self, step: int, total_steps: int) -> float:
        if self.config.schedule == "constant":
            return 1.0
        return warmup_cosine(step, total_steps)

    def _augment(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        x, target, mask = batch["image"], batch["target"], batch["mask"]
        if self.config.flip:
            flip = (torch.rand(x.shape[0], generator=generator) < 0.5)[:, None, None, None]
            x, target, mask = (torch.where(flip, t.flip(-1), t) for t in (x, target, mask))
        if self.config.jitter > 0:
            j = self.config.jitter
            x = augment.color_jitter(x, generator, j, j, j if x.shape[1] == 3 else 0.0)
        return x, target, mask

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x, target, mask = self._augment(batch, generator)
        pred = self._predict(x)
        scale = self.config.scale_um
        loss = masked_regression_loss(pred, target.float() / scale, mask.float(), self.config.loss)
        with torch.no_grad():
            mae = masked_regression_loss(pred * scale, target.float(), mask.float(), "l1")
        return loss, {"mae_um": float(mae)}

    def validation_outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pred = self.forward(batch["image"])
        err = (pred - batch["target"].float()).abs() * batch["mask"].float()
        return {"abs_error": err.sum(dim=(1, 2, 3)), "pixels": batch["mask"].float().sum(dim=(1, 2, 3))}

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        pixels = float(outputs["pixels"].sum())
        return {"mae_um": float(outputs["abs_error"].sum()) / pixels if pixels else float("nan")}


def load_regressor(path: str | Path) -> CrossModal:
    """Rebuild a saved fundus-to-thickness regressor (kind ``cross-modal``: encoder, decoder and the
    mean-map prior), in eval mode; ``forward`` gives micrometres."""
    saved = read_model(path, kinds=("cross-modal",),
                       hint="`retinassl oct pretrain` saves one into <run>/regressor")
    meta = saved.meta
    encoder = build_encoder(meta["arch"], **meta["kwargs"])
    method = build_method(CrossModal.name, meta["cross_modal"], encoder)
    if "prior" in saved.state:  # a buffer whose shape is set by start_from
        method.prior = torch.zeros_like(saved.state["prior"])
    load_state_strict(method, saved.state, saved.weights_file)
    return method.eval()

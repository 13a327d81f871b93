"""Supervised classification: an encoder and a linear head trained with cross-entropy.

Used as (1) the supervised normal/abnormal "Fundus" pretraining of Jang et al. 2024 ("trained
using supervised learning methods to classify normal and abnormal fundus images"), (2) full
fine-tuning and linear probing in the transfer protocol, and (3) the supervised patch baselines of
Lecouat et al. 2018 ("a shallow CNN with architecture similar to the GAN (ConvNet), and a 34-layer
residual network (ResNet34)", with "binary crossentropy balanced class-weighting").

Tasks: ``binary`` (one logit, BCE; score = sigmoid(logit)), ``multiclass`` (K logits, CE),
``multilabel`` (K logits, BCE per label), ``regression`` (one output, Huber loss on the target
standardised by the training targets' mean and standard deviation; score = the value in the
target's units; validation: mean absolute error beside that of always predicting the training mean,
e.g. a fundus photograph -> its eye's OCT retinal thickness, DeepRT's cross-modal target).

Weak image-level labels (binary task): a batch may also carry *bags*, ``bag_image`` ``(nb, K, C,
H, W)`` (the K patches of nb images) with ``bag_label`` ``(nb,)``. A bag's logit is the maximum of
its patches' logits (standard multiple-instance learning: an image is diseased when at least one
of its patches is), trained with BCE. The loss is the mean over the batch's items, a bag counting
as one item weighted by ``bag_weight``, so it does not depend on how many bags a batch drew. This
is how images that have an image grade but no lesion masks teach a patch classifier.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from pydantic import Field, NonNegativeFloat

from retinassl.config import Section
from retinassl.data import augment
from retinassl.data.augment import AcquisitionAugmentConfig
from retinassl.metrics.classification import roc_auc
from retinassl.methods.base import Method, register_method
from retinassl.models import Encoder
from retinassl.models.heads import LinearHead
from retinassl.models.vit_transfer import layer_decay_groups
from retinassl.methods.pretext_base import warmup_cosine


class SupervisedConfig(Section):
    """Supervised classification settings.

    Attributes:
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        num_classes: classes (multiclass) or labels (multilabel); 1 output for binary.
        lr: Adam learning rate. weight_decay: AdamW weight decay.
        schedule: ``constant`` or ``cosine`` (decay to 0 over the run, after 5 % warm-up).
        warmup_steps: linear warm-up over exactly this many steps instead (step ``s`` gets
            ``(s + 1) / warmup_steps`` of the lr; then the schedule: cosine decay over the
            remaining steps, or constant); None: 5 % of the run (cosine) or none (constant).
        layer_decay: layer-wise learning-rate decay for ViT encoders (BEiT/MAE/RETFound fine-tuning,
            e.g. 0.65 or 0.75): block ``i`` of a depth-``d`` ViT trains at ``lr * layer_decay **
            (d - i)``, the embeddings at ``lr * layer_decay ** (d + 1)``, the final norm and head at
            ``lr``; biases, norms, tokens and position embedding then get no weight decay
            (:func:`~retinassl.models.vit_transfer.layer_decay_groups`). None: one group (ResNets).
        augment: ``none``, ``dihedral`` (flips and 90-degree rotations), ``affine`` (any
            rotation, flip, +-10 % scale, colour jitter).
        channel_gain: log-range of a random per-channel gain applied to each training input
            (:func:`~retinassl.data.augment.channel_gain`; one value or one per channel; 0: off).
            A colour-cast augmentation for intensities in [0, 1].
        acquisition: what another camera does to a photograph (blur, resolution, vignetting, gamma,
            saturation/hue, JPEG; :func:`~retinassl.data.augment.acquisition_augment`), after the
            colour cast; all off by default. For intensities in [0, 1].
        class_balance: weight classes inversely to their frequency in each batch's labels
            (binary: BCE ``pos_weight`` from the training set, given as ``pos_weight``).
        pos_weight: BCE weight of positives for ``binary`` (None: unweighted).
        freeze_encoder: train only the head (linear probe; the encoder stays in eval mode).
        batch_norm: ``batch`` (batch-norm layers normalise by each training batch's statistics and
            update their running statistics, as usual) or ``frozen`` (they keep normalising by the
            running statistics they start with, in training as in evaluation, while their scale and
            shift still train: the "frozen BN" of fine-tuning with small batches, and what lets a
            fine-tuning started at a linear probe of eval-mode embeddings start at that probe).
        dropout: dropout before the head.
        bag_weight: weight of one image-level labelled bag against one labelled patch in the
            loss (binary task; used when batches carry bags, see the module docstring).
        target_mean, target_std: ``regression``: the training targets' mean and standard deviation
            (set by the job from the fitted rows); the head predicts ``(y - mean) / std``.
        tta: test-time augmentation of :meth:`Supervised.scores` (what evaluations and ``retinassl
            predict`` use; training and its validation are not affected): ``none``, ``flips`` (the mean
            score over the image, its two mirror images and its half turn) or ``dihedral`` (over all 8
            flips and quarter turns; :data:`~retinassl.data.augment.TEST_TIME_VIEWS`). A fundus photograph
            has no preferred orientation once the training augmentation turns it; averaging the views
            removes what remains of the network's orientation dependence, at 4x or 8x the inference cost.
    """

    task: Literal["binary", "multiclass", "multilabel", "regression"] = "binary"
    num_classes: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1)
    augment: Literal["none", "dihedral", "affine"] = "dihedral"
    channel_gain: NonNegativeFloat | tuple[NonNegativeFloat, ...] = 0.0
    acquisition: AcquisitionAugmentConfig = AcquisitionAugmentConfig()
    pos_weight: float | None = Field(None, gt=0)
    freeze_encoder: bool = False
    batch_norm: Literal["batch", "frozen"] = "batch"
    dropout: float = Field(0.0, ge=0, lt=1)
    bag_weight: NonNegativeFloat = 1.0
    target_mean: float = 0.0
    target_std: float = Field(1.0, gt=0)
    tta: Literal["none", "flips", "dihedral"] = "none"


@register_method
class Supervised(Method):
    """Encoder + linear head, cross-entropy (see the module docstring)."""

    name = "supervised"
    Config = SupervisedConfig

    def __init__(self, config: SupervisedConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        outputs = 1 if config.task in ("binary", "regression") else config.num_classes
        self.head = LinearHead(encoder.num_features, outputs, config.dropout)
        self.monitor = {"binary": ("auc", "max"), "regression": ("mae", "min")}.get(config.task, ("loss", "min"))
        if config.freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> Supervised:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        elif self.config.batch_norm == "frozen":
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B,)`` for binary (the standardised value for regression),
        else ``(B, K)``."""
        logits = self.head(self.encoder(x))
        return logits[:, 0] if self.config.task in ("binary", "regression") else logits

    def patch_logit(self) -> tuple[Encoder, nn.Linear, str] | None:
        """A binary model's encoder and one-logit head (inputs as normalised); none otherwise."""
        if self.config.task != "binary":
            return None
        return copy.deepcopy(self.encoder), copy.deepcopy(self.head.fc), "unit"

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: ``(B,)`` for binary, ``(B, K)`` for multiclass/multilabel; for regression the
        value ``(B,)`` in the target's units; with ``tta`` their mean over the views."""
        views = augment.TEST_TIME_VIEWS[self.config.tta]
        if len(views) == 1:
            return self._scores(x)
        return torch.stack([self._scores(augment.dihedral_view(x, code)).float() for code in views]).mean(0)

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward(x)
        if self.config.task == "regression":
            return self.in_units(logits)
        return torch.softmax(logits, 1) if self.config.task == "multiclass" else torch.sigmoid(logits)

    def in_units(self, z: torch.Tensor) -> torch.Tensor:
        """A standardised regression output in the target's units."""
        return z.float() * self.config.target_std + self.config.target_mean

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        config = self.config
        if config.layer_decay is not None:
            groups = layer_decay_groups(self.encoder, config.lr, config.weight_decay, config.layer_decay,
                                        others=self.head.parameters())
            return {"main": torch.optim.AdamW(groups, lr=config.lr)}
        params = [p for p in self.parameters() if p.requires_grad]
        return {"main": torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)}

    def lr_factor(self, step: int, total_steps: int) -> float:
        warmup = self.config.warmup_steps
        if self.config.schedule == "constant":
            return 1.0 if not warmup or step >= warmup else (step + 1) / warmup
        return warmup_cosine(step, total_steps, 0.05, warmup)

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.config.augment == "dihedral":
            x = augment.dihedral(x, generator)
        elif self.config.augment == "affine":
            x = augment.random_affine(x, generator, degrees=180, scale=(0.9, 1.1), translate=0.03)
            x = augment.color_jitter(x, generator, 0.1, 0.1, 0.1)
        x = augment.channel_gain(x, generator, self.config.channel_gain)
        return augment.acquisition_augment(x, self.config.acquisition, generator)

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        bags = batch.get("bag_image")
        if bags is None:
            return self.criterion(self.forward(self._augment(batch["image"], generator)), batch["label"]), {}
        if self.config.task != "binary":
            raise ValueError("image-level bags need the binary task")
        n, (nb, k) = batch["image"].shape[0], bags.shape[:2]
        x = self._augment(torch.cat([batch["image"], bags.flatten(0, 1)]), generator)
        logits = self.forward(x)
        bag_losses = F.binary_cross_entropy_with_logits(logits[n:].view(nb, k).amax(1).float(),
                                                        batch["bag_label"].float(), reduction="none")
        total = self.config.bag_weight * bag_losses.sum()
        if n:
            total = total + n * self.criterion(logits[:n], batch["label"])  # (a mean over the patches)
        return total / (n + nb), {"bag_loss": float(bag_losses.detach().mean())}

    def criterion(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.config.task == "binary":
            weight = None if self.config.pos_weight is None else torch.tensor(self.config.pos_weight)
            return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weight)
        if self.config.task == "multiclass":
            return F.cross_entropy(logits, labels.long())
        if self.config.task == "regression":
            standard = (labels.float() - self.config.target_mean) / self.config.target_std
            return F.smooth_l1_loss(logits, standard)
        return F.binary_cross_entropy_with_logits(logits, labels.float())

    def validation_outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.forward(batch["image"])
        return {"logits": logits.float(), "label": batch["label"].float()}

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        logits, labels = outputs["logits"], outputs["label"]
        metrics = {"loss": float(self.criterion(logits, labels))}
        if self.config.task == "binary":
            metrics["auc"] = roc_auc(labels.numpy(), logits.numpy())
        if self.config.task == "regression":  # error in the target's units, and that of the mean
            metrics["mae"] = float((self.in_units(logits) - labels).abs().mean())
            metrics["mae_of_mean"] = float((labels - self.config.target_mean).abs().mean())
            metrics["skill"] = 1.0 - metrics["mae"] / metrics["mae_of_mean"] if metrics["mae_of_mean"] else 0.0
        return metrics

"""The patch-based semi-supervised GAN of Lecouat et al. 2018 (registered as ``ssl-gan``).

Lecouat et al. 2018, "Semi-Supervised Deep Learning for Abnormality Classification in Retinal
Images": "We build upon the semi-supervised feature-matching GAN framework (16). This method extends
the discriminator D to determine the specific class of the image in addition to determining whether
the image is real or generated." (16 = Salimans et al. 2016, "Improved Techniques for Training
GANs".)

- Discriminator: the conv-large trunk (the method's ``encoder``, Table 3) and a weight-normalised
  dense layer with K = 2 real-class logits; the fake class's logit is fixed at 0
  (:mod:`retinassl.losses.gan` derives ``p(fake | x) = 1 / (1 + sum_k exp l_k)``).
- ``L_D = L_supervised + L_unsupervised``: cross-entropy on the labelled patches, plus the GAN loss
  on all real patches (labelled and unlabelled, as ``E_{x ~ I}`` runs over all of ``I``) and on
  generated ones.
- Generator (Table 4, adapted to 32x32, :mod:`retinassl.models.gan`) trained with feature
  matching on ``h(x)``, the pooled activations after the NiN layers.
- Adam (lr 3e-4, beta1 0.5) for both networks, the learning rate decaying linearly to 0 over the
  last ``1 - decay_start`` of the run (Table 6: 1200 epochs, "linear to 0 after 1000 epochs",
  i.e. ``decay_start = 1000 / 1200``), Gaussian initialisation (sigma 0.05, biases 0) followed by
  the data-dependent initialisation of the weight-normalised discriminator on the first training
  batch (:func:`~retinassl.models.gan.data_dependent_init`, as in Salimans et al.'s code), and "an
  exponential moving average of the parameters for inference" (decay 0.999; see ``ema_decay``).
- Augmentation: "random cropping and flipping": each real patch arrives as a window with a context
  margin around its grid cell (:class:`retinassl.data.patch_bank.PatchBank`); a random
  ``patch_size`` crop of it is taken and flipped horizontally and/or vertically at random.

Batches (:class:`retinassl.data.patch_bank.SemiSupervisedPatches`): ``unlabelled`` ``(B, C, W, W)``
windows of any training patch, ``labelled`` ``(B, C, W, W)`` windows of labelled patches and their
``label`` ``(B,)``; validation batches: ``image`` ``(B, C, p, p)`` and ``label``. Inputs are expected
in [0, 1] (``max`` or ``unit`` normalisation) and mapped to [-1, 1], the generator's tanh range.

Divergence: NaN/inf losses are caught by the engine; a **collapsed generator** is detected here:
every ``collapse_every`` steps the variance over the batch of the generated patches' features
``h(G(z))`` is compared with that of the real patches' features; when the ratio stays below
``collapse_ratio`` for ``collapse_patience`` checks in a row, :meth:`divergence` reports it and the
engine stops with :class:`~retinassl.errors.TrainingDiverged` after saving the weights. The same
check records the ratio in pixel space (``sample_variance_ratio``: the per-pixel variance over the
batch of generated vs real patches), which the discriminator's dropout does not inflate; a run
reports its last value (``generator_sample_variance_ratio``). Near 0 the generator draws one patch
whatever the noise: the discriminator may still classify well, but the GAN term then teaches it
little. (On IDRiD at the cpu budget the generator collapses this way within ~100 steps; a longer
run or ``pull_away_weight`` lets it recover.)
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, model_validator
from torch import nn

from retinassl.config import Section
from retinassl.data import augment
from retinassl.metrics.classification import roc_auc
from retinassl.metrics.image_score import image_scores
from retinassl.methods.base import Method, register_method
from retinassl.models import Encoder
from retinassl.losses import gan as losses
from retinassl.models.gan import PatchGenerator, data_dependent_init, discriminator_head, gaussian_init


class SSLGANConfig(Section):
    """Settings of the patch SSL-GAN (defaults: Lecouat et al. 2018, Tables 3, 4 and 6).

    Attributes:
        num_classes: K real classes (2: healthy, diseased).
        latent_dim: generator noise size (100, uniform).
        generator_channels: generator dense and transposed-convolution channels (Table 4:
            512, 256, 128, 128).
        patch_size: side of the discriminator's input and the generator's output (32).
        lr: Adam learning rate (3e-4). beta1: Adam beta1 (0.5).
        decay_start: fraction of the run after which the learning rate decays linearly to 0
            (1000/1200, Table 6).
        ema_decay: decay of the exponential moving average of the discriminator used for
            inference (0.999); the effective decay at update ``t`` is ``min(ema_decay, (1 + t) /
            (10 + t))``, so short runs are not dominated by the initial weights.
        init_std: standard deviation of the Gaussian weight initialisation (0.05).
        init_seed: seed of the initialisation.
        unsupervised_weight: weight of ``L_unsupervised`` in ``L_D`` (1, as in the paper's
            equation; Salimans et al.'s code uses 0.5).
        feature_matching: ``l1`` (Lecouat et al.'s equation) or ``l2`` (Salimans et al.).
        pull_away_weight: weight of the pull-away term on the generated samples' features in the
            generator's loss (:func:`~retinassl.losses.gan.pull_away_term`; Dai et al.
            2017); 0 = the paper's feature matching alone.
        select_on_validation: end with the weights (EMA included) of the validation pass with
            the best patch AUC, as the supervised baselines do, instead of the last ones (the
            paper's fixed schedule). Needs validation patches. The reported
            ``generator_sample_variance_ratio`` is still the last check's.
        select_metric: what ``select_on_validation`` (and the engine's ``patience``) follows:
            ``patch_auc`` over the validation patches, or ``image_auc`` over the validation
            images (each scored by its patches with the paper's ``sum`` rule, as the test images
            are; needs ``select_on_validation``, every validation patch: the learner's
            ``val_patches`` at least their number, and validation images of both classes).
        flip: random horizontal and vertical flips of real patches.
        channel_gain: log-range of a random per-channel gain applied to every real patch
            (:func:`~retinassl.data.augment.channel_gain`, then clipped to [0, 1]; one value or
            one per channel; 0: off, as in the paper).
        acquisition: what another camera does to a photograph (blur, resolution, vignetting, gamma,
            saturation/hue, JPEG; :func:`~retinassl.data.augment.acquisition_augment`), on every
            real patch after the channel gain; all off by default (nothing drawn).
        collapse_ratio: generated/real feature-variance ratio below which a check counts as
            collapsed. collapse_patience: consecutive collapsed checks that stop training. (On
            IDRiD the ratio swings between ~0.002 and ~0.8 in healthy early training, so only a
            generator stuck far below that for 10 checks counts as collapsed.)
        collapse_every: steps between checks (0: never check).
        class_weights: weights of the K classes in ``L_supervised`` (None: unweighted, as in the
            paper). The learner sets ``(1, negatives / positives)`` when ``balance_classes`` is on.
        balance_classes: ask the learner for class weights from the labelled patches' prevalence
            (the "balanced class-weighting" of the paper's supervised baselines, Table 5).
        data_init: data-dependent initialisation of the discriminator's weight-normalised layers
            on the real patches of the first training batch (hidden pre-activations: mean 0, sd 1;
            logits: sd ``data_init_logit_scale``, 0.1 in Salimans et al.'s code).
        data_init_generator: also initialise the generator's weight-normalised output layer from
            its own output on a batch of noise (pre-tanh sd 0.1), as the reference code's init pass
            does. Off by default until measured on the whole table (see the SSL-GAN note).
    """

    num_classes: int = Field(2, ge=2)
    latent_dim: int = Field(100, ge=1)
    generator_channels: tuple[int, ...] = (512, 256, 128, 128)
    patch_size: int = Field(32, ge=16)
    lr: float = Field(3e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    decay_start: float = Field(1000 / 1200, ge=0, le=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    init_std: float = Field(0.05, gt=0)
    init_seed: int = 0
    unsupervised_weight: float = Field(1.0, ge=0)
    feature_matching: Literal["l1", "l2"] = "l1"
    pull_away_weight: float = Field(0.0, ge=0)
    select_on_validation: bool = False
    select_metric: Literal["patch_auc", "image_auc"] = "patch_auc"
    flip: bool = True
    channel_gain: NonNegativeFloat | tuple[NonNegativeFloat, ...] = 0.0
    acquisition: augment.AcquisitionAugmentConfig = augment.AcquisitionAugmentConfig()
    collapse_ratio: float = Field(0.001, ge=0)
    collapse_patience: int = Field(10, ge=1)
    collapse_every: int = Field(10, ge=0)
    class_weights: tuple[float, ...] | None = None
    balance_classes: bool = False
    data_init: bool = True
    data_init_logit_scale: float = Field(0.1, gt=0)
    data_init_generator: bool = False

    @model_validator(mode="after")
    def _selection(self) -> SSLGANConfig:
        if self.select_metric != "patch_auc" and not self.select_on_validation:
            raise ValueError(f"select_metric {self.select_metric} chooses the validation pass kept by "
                             f"select_on_validation, which is off: set select_on_validation: true")
        return self


def crop_and_flip(windows: torch.Tensor, size: int, generator: torch.Generator,
                  flip: bool = True) -> torch.Tensor:
    """Random ``size x size`` crops of ``(B, C, W, W)`` windows, each flipped at random.

    Offsets are uniform in ``[0, W - size]``; flips are horizontal and vertical with probability
    1/2 each; all drawn from ``generator``. ``W == size`` crops nothing.
    """
    b, _, h, w = windows.shape
    if h < size or w < size:
        raise ValueError(f"windows of {h}x{w} are smaller than the {size}x{size} crop")
    oy = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()
    ox = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
    flips = torch.randint(0, 4, (b,), generator=generator).tolist() if flip else [0] * b
    out = []
    for i in range(b):
        patch = windows[i, :, oy[i]:oy[i] + size, ox[i]:ox[i] + size]
        if flips[i] & 1:
            patch = patch.flip(-1)
        if flips[i] & 2:
            patch = patch.flip(-2)
        out.append(patch)
    return torch.stack(out)


def centre_crop(windows: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` part of ``(B, C, W, W)`` windows (the grid cell itself)."""
    h, w = windows.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return windows[..., top:top + size, left:left + size]


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * model`` for parameters; buffers are copied."""
    for a, m in zip(average.parameters(), model.parameters()):
        a.lerp_(m.detach().to(a.dtype), 1.0 - decay)
    for a, m in zip(average.buffers(), model.buffers()):
        a.copy_(m)


@register_method
class SSLGAN(Method):
    """Semi-supervised K+1 feature-matching GAN on patches (see the module docstring).

    Args:
        config: :class:`SSLGANConfig`.
        encoder: the discriminator trunk (``convnet`` with ``weight_norm=True, dropout=True``);
            its pooled output is ``h(x)``.
    """

    name = "ssl-gan"
    Config = SSLGANConfig
    monitor = None  # the paper trains a fixed schedule and uses the EMA weights (see select_on_validation)

    def __init__(self, config: SSLGANConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.head = discriminator_head(encoder.num_features, config.num_classes)
        self.generator_net = PatchGenerator(config.latent_dim, config.generator_channels,
                                            config.patch_size, encoder.in_channels)
        init = torch.Generator().manual_seed(config.init_seed)
        self._init_rng = torch.Generator().manual_seed(config.init_seed + 1)
        gaussian_init(self.encoder, config.init_std, init)
        gaussian_init(self.head, config.init_std, init)
        gaussian_init(self.generator_net, config.init_std, init)
        self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.ema_head = copy.deepcopy(self.head).requires_grad_(False)
        if config.select_on_validation:
            self.monitor = (config.select_metric, "max")
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("collapsed_checks", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_variance_ratio", torch.full((), float("nan")))
        # a diagnostic, not state: not checkpointed (checkpoints of earlier versions still load)
        self.register_buffer("last_sample_ratio", torch.full((), float("nan")), persistent=False)
        self.register_buffer("data_initialised", torch.tensor(not config.data_init))
        if config.class_weights is not None and len(config.class_weights) != config.num_classes:
            raise ValueError(f"class_weights has {len(config.class_weights)} values for "
                             f"{config.num_classes} classes")
        self._class_weights = (None if config.class_weights is None
                               else torch.tensor(config.class_weights, dtype=torch.float32))

    # -- networks ----------------------------------------------------------------------------
    def _discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.head.parameters()]

    def discriminate(self, x: torch.Tensor, ema: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, p, p)`` in [-1, 1] -> ``(logits (B, K), features h(x) (B, F))``."""
        encoder, head = (self.ema_encoder, self.ema_head) if ema else (self.encoder, self.head)
        features = encoder(x)
        return head(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch classifier logits ``(B,)`` (``l_diseased - l_healthy``) of ``(B, C, p, p)``
        patches in [0, 1], from the EMA discriminator (eval mode: no dropout)."""
        was_training = self.ema_encoder.training
        self.ema_encoder.eval()
        logits, _ = self.discriminate(x * 2 - 1, ema=True)
        self.ema_encoder.train(was_training)
        return losses.patch_logit(logits.float())

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``p(diseased | x, real)`` ``(B,)``."""
        return torch.sigmoid(self.forward(x))

    def patch_logit(self) -> tuple[Encoder, nn.Linear, str]:
        """The EMA discriminator as one logit ``l_1 - l_0`` on inputs mapped to [-1, 1]."""
        return copy.deepcopy(self.ema_encoder), self.folded_head(), "tanh"

    def folded_head(self) -> nn.Linear:
        """The EMA head as one linear layer ``(B, F) -> (B, 1)`` giving ``l_1 - l_0``."""
        weight = self.ema_head.weight.detach()
        bias = self.ema_head.bias.detach()
        linear = nn.Linear(weight.shape[1], 1)
        with torch.no_grad():
            linear.weight.copy_((weight[1] - weight[0])[None].float())
            linear.bias.copy_((bias[1] - bias[0])[None].float())
        return linear

    @torch.no_grad()
    def initialise_from_data(self, real: torch.Tensor) -> None:
        """Data-dependent initialisation of the discriminator (and its EMA copy) on ``real``
        patches in [-1, 1]; done once, on the first training batch (the flag is checkpointed).
        Under DDP every rank sees a different batch, so rank 0's result is broadcast to all."""
        with torch.autocast(device_type=real.device.type, enabled=False):
            data_dependent_init(nn.Sequential(self.encoder, self.head), real.float(),
                                last_scale=self.config.data_init_logit_scale)
            if self.config.data_init_generator:
                z = self.generator_net.sample_latent(real.shape[0], self._init_rng)
                data_dependent_init(self.generator_net, z.to(real.device), scale=0.1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in [*self.encoder.parameters(), *self.head.parameters(),
                           *self.generator_net.parameters(), *self.generator_net.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)
        self.ema_encoder.load_state_dict(self.encoder.state_dict())
        self.ema_head.load_state_dict(self.head.state_dict())
        self.data_initialised.fill_(True)

    # -- training ----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, 0.999)
        return {"discriminator": torch.optim.Adam(self._discriminator_parameters(), lr=self.config.lr,
                                                  betas=betas),
                "generator": torch.optim.Adam(self.generator_net.parameters(), lr=self.config.lr,
                                              betas=betas)}

    def lr_factor(self, step: int, total_steps: int) -> float:
        start = self.config.decay_start * total_steps
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / max(1.0, total_steps - start))

    def _real(self, windows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = crop_and_flip(windows, self.config.patch_size, generator, self.config.flip)
        gained = augment.channel_gain(x, generator, self.config.channel_gain)
        x = x if gained is x else gained.clamp(0, 1)
        x = augment.acquisition_augment(x, self.config.acquisition, generator) * 2 - 1
        if windows.is_contiguous(memory_format=torch.channels_last):  # keep the batch's layout
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _fake(self, n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        z = self.generator_net.sample_latent(n, generator).to(like.device)
        fake = self.generator_net(z)
        if like.is_contiguous(memory_format=torch.channels_last):
            fake = fake.contiguous(memory_format=torch.channels_last)
        return fake

    def loss(self, batch: dict[str, Any], group: str,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        train_d = group == "discriminator"
        for p in self._discriminator_parameters():
            p.requires_grad_(train_d)
        self.generator_net.requires_grad_(not train_d)
        unlabelled = self._real(batch["unlabelled"], generator)
        if train_d:
            return self._discriminator_loss(unlabelled, batch, generator)
        return self._generator_loss(unlabelled, generator)

    def _discriminator_loss(self, unlabelled: torch.Tensor, batch: dict[str, Any],
                            generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        labelled = self._real(batch["labelled"], generator)
        if not bool(self.data_initialised):
            self.initialise_from_data(torch.cat([labelled, unlabelled]))
        with torch.no_grad():
            fake = self._fake(unlabelled.shape[0], generator, unlabelled)
        n_lab, n_unl = labelled.shape[0], unlabelled.shape[0]
        logits, features = self.discriminate(torch.cat([labelled, unlabelled, fake]))
        logits_lab, logits_real = logits[:n_lab], logits[:n_lab + n_unl]
        logits_fake = logits[n_lab + n_unl:]
        l_sup = losses.supervised_loss(logits_lab, batch["label"], self._class_weights)
        l_unsup = losses.unsupervised_loss(logits_real, logits_fake)
        total = l_sup + self.config.unsupervised_weight * l_unsup
        metrics = {"l_supervised": float(l_sup.detach()), "l_unsupervised": float(l_unsup.detach()),
                   "p_fake_real": float(losses.fake_probability(logits_real.detach()).mean()),
                   "p_fake_generated": float(losses.fake_probability(logits_fake.detach()).mean())}
        every = self.config.collapse_every
        if every and int(self.steps) % every == 0:
            ratio = losses.feature_variance_ratio(features[n_lab:n_lab + n_unl], features[n_lab + n_unl:])
            samples = losses.feature_variance_ratio(unlabelled.flatten(1), fake.flatten(1))
            self.last_variance_ratio.fill_(ratio)
            self.last_sample_ratio.fill_(samples)
            metrics["sample_variance_ratio"] = samples
            if ratio < self.config.collapse_ratio:
                self.collapsed_checks += 1
            else:
                self.collapsed_checks.zero_()
            metrics["feature_variance_ratio"] = ratio
        return total, metrics

    def _generator_loss(self, unlabelled: torch.Tensor,
                        generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            _, real_features = self.discriminate(unlabelled)
        fake = self._fake(unlabelled.shape[0], generator, unlabelled)
        _, fake_features = self.discriminate(fake)
        loss = losses.feature_matching_loss(real_features, fake_features, self.config.feature_matching)
        if self.config.pull_away_weight > 0:
            pull_away = losses.pull_away_term(fake_features)
            return loss + self.config.pull_away_weight * pull_away, {"pull_away": float(pull_away.detach())}
        return loss, {}

    def after_step(self) -> None:
        t = int(self.steps)
        decay = min(self.config.ema_decay, (1 + t) / (10 + t))
        ema_update(self.ema_encoder, self.encoder, decay)
        ema_update(self.ema_head, self.head, decay)
        self.steps += 1

    def health(self) -> dict[str, float]:
        """The last pixel-space ratio (``generator_sample_variance_ratio``), once checked."""
        ratio = float(self.last_sample_ratio)
        return {} if ratio != ratio else {"generator_sample_variance_ratio": ratio}   # NaN: never

    def divergence(self) -> str | None:
        if int(self.collapsed_checks) < self.config.collapse_patience:
            return None
        return (f"the generator collapsed: the variance of its patches' discriminator features was "
                f"below {self.config.collapse_ratio:g} x that of real patches for "
                f"{int(self.collapsed_checks)} checks in a row (last ratio "
                f"{float(self.last_variance_ratio):.2e}, step {int(self.steps)}). Try a lower "
                f"learning rate, feature_matching l2, or a wider generator.")

    # -- validation --------------------------------------------------------------------------
    def validation_outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {"logits": self.forward(batch["image"]).float(), "label": batch["label"].float()}
        if "image_index" in batch:
            out["image_index"] = torch.as_tensor(batch["image_index"]).float()
            out["image_label"] = torch.as_tensor(batch["image_label"]).float()
        return out

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """``patch_auc``; when the patches come with their images (every validation patch scored:
        :class:`~retinassl.data.patch_bank.LabelledPatches` with ``image_labels``) and those hold
        both classes, also ``image_auc``: each validation image scored as the test images are, by
        the paper's ``sum`` rule (:func:`~retinassl.metrics.image_score.image_scores`), against its
        label."""
        labels, logits = outputs["label"].numpy(), outputs["logits"].numpy()
        metrics = {"patch_auc": roc_auc(labels, logits)}
        if "image_index" in outputs:
            image = outputs["image_index"].numpy().astype(int)
            images, counts = np.unique(image, return_counts=True)
            order = np.argsort(image, kind="stable")       # each image's patches side by side
            image_label = outputs["image_label"].numpy().astype(int)[order][np.cumsum(counts) - 1]
            if len(set(counts.tolist())) != 1:  # image_auc would be missing, and the kept pass silently the last
                raise ValueError(f"ssl-gan validation: the validation images came with {counts.min()} to "
                                 f"{counts.max()} patches each; image_auc needs every patch of every image")
            if 0 < image_label.sum() < len(images):
                scores = image_scores(logits[order].reshape(len(images), -1), "sum")
                metrics["image_auc"] = roc_auc(image_label, scores)
        return metrics

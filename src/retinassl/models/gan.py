"""The networks of the patch SSL-GAN: the K-logit discriminator and the generator.

Discriminator (Lecouat et al. 2018, Table 3): the conv-large trunk
(:class:`retinassl.models.convnet.ConvNet`, weight norm, dropout, leaky ReLU 0.2) followed by global
pooling and a weight-normalised dense layer. Table 3 lists "dense weightnorm 10" (the CIFAR-10 head
of Salimans et al.); here it has K outputs, K = 2 (healthy, diseased), and the fake class's logit is
fixed at 0 (see :mod:`retinassl.losses.gan`).

Generator (Table 4, "DR" column): "latent space 100 (uniform noise)", "dense 6x6x512 batchnorm
ReLU", then "5x5 conv.T" layers with 256, 128, 128 channels ("batchnorm ReLU stride=2") and a last
"5x5 conv.T 3 weightnorm tanh stride=2". Four stride-2 transposed convolutions from 6x6 give
96x96 images, but the paper also says "we downsampled the patches to 32x32", which the
discriminator's input (Table 3: "32x32x3 images") confirms. **Adaptation**: the dense layer
produces a ``(out_size / 16) x (out_size / 16) x 512`` map (2x2 for 32x32 patches) instead of
6x6, and every other layer of Table 4 is kept, so the generator outputs ``out_size x out_size``
patches. Channel counts are configurable (narrower on CPU budgets).

Initialisation (Table 6): "Isotropic gaussian (mu = 0, sigma = 0.05)" weights and "Constant (0)"
biases, drawn from a ``torch.Generator`` (:func:`gaussian_init`). For weight-normalised layers the
direction ``v`` is drawn and the gain ``g`` set to ``||v||``, so the effective weight is the drawn
Gaussian. The discriminator then gets the **data-dependent initialisation** of weight normalisation
(Salimans & Kingma 2016), which the feature-matching GAN's reference code runs on a batch of real
images before the first update (``init_param(trainx[:500])``, "data based initialization"):
:func:`data_dependent_init` sets every weight-normalised layer's gain and bias so that its
pre-activations have zero mean and a chosen standard deviation over that batch. Without it, ten
layers of N(0, 0.05) weights shrink the signal's variance by roughly 0.4 per layer (about 1e-4
after ten), which Adam at lr 3e-4 must undo by slowly growing the gains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm



def discriminator_head(num_features: int, num_classes: int = 2) -> nn.Module:
    """Table 3's last layer: a weight-normalised dense layer ``(B, F) -> (B, K)`` real-class logits."""
    return weight_norm(nn.Linear(num_features, num_classes))


class PatchGenerator(nn.Module):
    """Table 4's generator adapted to ``out_size`` patches (see the module docstring).

    Args:
        latent_dim: size of the uniform noise vector (100).
        channels: ``(dense, conv.T 1, conv.T 2, ...)`` channels; Table 4: ``(512, 256, 128, 128)``.
        out_size: side of the generated patches; must equal ``start * 2 ** len(channels)`` with an
            integer ``start`` (the dense layer's map side).
        out_channels: 3 (RGB).

    ``forward(z)``: ``(B, latent_dim)`` -> ``(B, out_channels, out_size, out_size)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int = 100, channels: Sequence[int] = (512, 256, 128, 128),
                 out_size: int = 32, out_channels: int = 3) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        ups = len(channels)  # transposed convolutions, including the last (to RGB)
        if out_size % (2 ** ups):
            raise ValueError(f"out_size {out_size} is not divisible by 2**{ups}")
        self.start = out_size // (2 ** ups)
        self.latent_dim = latent_dim
        self.channels = channels
        self.dense = nn.Sequential(nn.Linear(latent_dim, channels[0] * self.start ** 2),
                                   nn.BatchNorm1d(channels[0] * self.start ** 2), nn.ReLU())
        layers: list[nn.Module] = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1),
                       nn.BatchNorm2d(cout), nn.ReLU()]
        # weight norm over the output channels, which are dim 1 of a ConvTranspose2d weight
        layers += [weight_norm(nn.ConvTranspose2d(channels[-1], out_channels, 5, stride=2, padding=2,
                                                  output_padding=1), dim=1), nn.Tanh()]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z).view(z.shape[0], self.channels[0], self.start, self.start)
        return self.deconv(x)

    def sample_latent(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, latent_dim)`` uniform noise in [-1, 1) from ``generator`` ("uniform noise")."""
        return torch.rand(n, self.latent_dim, generator=generator) * 2 - 1


@torch.no_grad()
def gaussian_init(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """Table 6's initialisation for every conv/linear layer of ``module``: weights ~ N(0, std),
    biases 0; for weight-normalised layers the direction is drawn and the gain set to its norm."""
    for layer in module.modules():
        if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            continue
        if layer.bias is not None:
            layer.bias.zero_()
        param = getattr(layer, "parametrizations", None)
        if param is not None and "weight" in param:
            g, v = param.weight.original0, param.weight.original1
            v.copy_(torch.randn(v.shape, generator=generator) * std)
            dims = [d for d in range(v.ndim) if g.shape[d] == 1]
            g.copy_(v.pow(2).sum(dim=dims, keepdim=True).sqrt())
        else:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)


def _weight_norm_parts(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(g, v)`` of a layer weight-normalised with ``torch.nn.utils.parametrizations.weight_norm``."""
    param = getattr(layer, "parametrizations", None)
    if param is None or "weight" not in param:
        return None
    return param.weight.original0, param.weight.original1


@torch.no_grad()
def data_dependent_init(module: nn.Module, x: torch.Tensor, scale: float = 1.0,
                        last_scale: float | None = None, eps: float = 1e-6) -> int:
    """Data-dependent initialisation of every weight-normalised (transposed) conv/linear layer of
    ``module``.

    One forward pass of ``x`` through ``module``; each weight-normalised layer (in the order the
    pass reaches it) gets ``g <- g * s / sigma`` and ``b <- (b - mu) * s / sigma``, with ``mu`` and
    ``sigma`` the per-output-channel mean and standard deviation of its output over the batch (and
    positions), and its output is replaced by the re-initialised one so that later layers see it.
    Every layer's pre-activations then have mean 0 and standard deviation ``s`` on ``x``.

    Args:
        module: the network (its current mode, e.g. dropout in training, is used).
        x: a batch of real inputs.
        scale: ``s`` of the hidden layers (1).
        last_scale: ``s`` of the last weight-normalised layer reached (the logits; Salimans et
            al.'s code uses 0.1); None: ``scale``.
        eps: added to ``sigma``.

    Returns the number of layers initialised. A layer without a bias gets only its gain set.
    """
    layers = [m for m in module.modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
              and _weight_norm_parts(m) is not None]
    order: list[nn.Module] = []

    def hook(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        order.append(layer)
        out = output.float()
        dims = [d for d in range(out.ndim) if d != 1]
        mu, sigma = out.mean(dim=dims), out.std(dim=dims) + eps
        s = last_scale if (last_scale is not None and len(order) == len(layers)) else scale
        g, _ = _weight_norm_parts(layer)  # type: ignore[misc]
        g.mul_((s / sigma).view(g.shape).to(g.dtype))
        shape = [1] * out.ndim
        shape[1] = -1
        if layer.bias is not None:
            layer.bias.sub_(mu.to(layer.bias.dtype)).mul_((s / sigma).to(layer.bias.dtype))
            return ((out - mu.view(shape)) * (s / sigma).view(shape)).to(output.dtype)
        return (out * (s / sigma).view(shape)).to(output.dtype)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return len(order)

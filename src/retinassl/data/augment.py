"""Batched, seeded augmentations on tensors (run inside a method's loss with the engine's generator).

All functions take ``(B, C, H, W)`` float tensors and a ``torch.Generator`` (on the CPU); random
parameters are drawn per sample from the generator, so the same generator state gives the same
augmented batch. Geometric transforms suit fundus images: any rotation and flip is plausible (left
and right eyes are mirror images), small scale changes mimic field-of-view differences; colour
changes mimic camera and illumination differences. The acquisition augmentations
(:func:`acquisition_augment`, configured by :class:`AcquisitionAugmentConfig`) add what another
camera does: tone curve, colour, blur, resolution, vignetting and JPEG compression.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations per sample."""
    codes = torch.randint(0, 8, (x.shape[0],), generator=generator).tolist()
    return torch.stack([dihedral_view(sample, code) for sample, code in zip(x, codes)])


def dihedral_view(x: torch.Tensor, code: int) -> torch.Tensor:
    """The batch under one of the 8 flips/90-degree rotations (``code`` 0-7, as :func:`dihedral`
    draws them: bit 4 flips left-right, ``code % 4`` quarter turns; 0 is the identity, 2 a half turn)."""
    if code & 4:
        x = x.flip(-1)
    return torch.rot90(x, code % 4, dims=(-2, -1))


TEST_TIME_VIEWS = {"none": (0,), "flips": (0, 4, 6, 2), "dihedral": tuple(range(8))}
"""The views a test-time augmentation averages over: ``flips`` the identity, the left-right and
up-down flips (4, 6) and the half turn (2); ``dihedral`` all 8."""


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 180.0,
                  scale: tuple[float, float] = (0.9, 1.1), translate: float = 0.05,
                  hflip: bool = True) -> torch.Tensor:
    """Random rotation (+-``degrees``), isotropic scale, translation (fraction of the side) and
    horizontal flip per sample, in one bilinear resampling (zeros outside)."""
    b = x.shape[0]
    angle = _uniform(b, -degrees, degrees, generator) * math.pi / 180
    s = _uniform(b, scale[0], scale[1], generator)
    tx = _uniform(b, -translate, translate, generator) * 2
    ty = _uniform(b, -translate, translate, generator) * 2
    flip = (torch.rand(b, generator=generator) < 0.5) if hflip else torch.zeros(b, dtype=torch.bool)
    sign = torch.where(flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos * sign, -sin, tx], 1), torch.stack([sin * sign, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator,
                        scale: tuple[float, float] = (0.4, 1.0)) -> torch.Tensor:
    """SimCLR's crop: a random square of ``scale`` of the area, resized back to the input size."""
    b, _, h, w = x.shape
    side = torch.sqrt(_uniform(b, scale[0], scale[1], generator))
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - side)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - side)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([side, zero, cx], 1), torch.stack([zero, side, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, generator: torch.Generator, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in ``[1 - v, 1 + v]`` per sample."""
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    fb = _uniform(b, 1 - brightness, 1 + brightness, generator).view(shape).to(x)
    fc = _uniform(b, 1 - contrast, 1 + contrast, generator).view(shape).to(x)
    fs = _uniform(b, 1 - saturation, 1 + saturation, generator).view(shape).to(x)
    x = x * fb
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * fc + mean
    if x.shape[1] == 3:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * fs + gray
    return x


def channel_gain(x: torch.Tensor, generator: torch.Generator,
                 spread: float | tuple[float, ...]) -> torch.Tensor:
    """Each channel of each sample multiplied by ``exp(u)``, ``u`` uniform in ``[-s_c, s_c]``.

    A colour cast: fundus cameras, pigmentation and lens yellowing scale the channels by
    different factors from eye to eye. ``spread`` is one log-range for all channels or one per
    channel; meant for non-negative intensities (``max`` or ``unit`` normalisation). All spreads 0:
    ``x`` unchanged, and nothing is drawn from ``generator``.
    """
    b, c = x.shape[:2]
    spreads = torch.as_tensor(spread, dtype=torch.float32).flatten()
    if not bool((spreads != 0).any()):
        return x
    if bool((spreads < 0).any()):
        raise ValueError(f"channel_gain: spreads must be >= 0, got {spread}")
    if spreads.numel() == 1:
        spreads = spreads.expand(c)
    if spreads.numel() != c:
        raise ValueError(f"channel_gain: {spreads.numel()} spreads for {c} channels")
    u = torch.rand((b, c), generator=generator) * 2 - 1
    return x * torch.exp(u * spreads).view(b, c, 1, 1).to(x)


def gaussian_blur(x: torch.Tensor, generator: torch.Generator, sigma: tuple[float, float] = (0.1, 2.0),
                  probability: float = 0.5) -> torch.Tensor:
    """Blur a random subset of the batch with a random sigma (separable 2-D Gaussian)."""
    b, c, h, w = x.shape
    apply = torch.rand(b, generator=generator) < probability
    sigmas = _uniform(b, sigma[0], sigma[1], generator)
    out = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        s = float(sigmas[i])
        radius = max(1, int(math.ceil(2 * s)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t ** 2) / (2 * s * s))
        k = k / k.sum()
        img = out[i:i + 1]
        img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"),
                       k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"),
                       k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        out[i:i + 1] = img
    return out


def random_grayscale(x: torch.Tensor, generator: torch.Generator, probability: float = 0.2) -> torch.Tensor:
    """Replace a random subset of 3-channel images by their luma (ITU-R 601), kept in 3 channels."""
    apply = (torch.rand(x.shape[0], generator=generator) < probability).to(x.device)
    if x.shape[1] != 3 or not bool(apply.any()):
        return x
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return torch.where(apply[:, None, None, None], gray, x)


# -- acquisition augmentation: what another camera, its optics and its compression do to an image --

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.595716, -0.274453, -0.321263],
                            [0.211456, -0.522591, 0.311135]], dtype=torch.float64)


def _applied(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """``(B,)`` bool on the CPU: which samples an augmentation applies to."""
    return torch.rand(x.shape[0], generator=generator) < probability


def _log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(low), math.log(high), generator))


def random_gamma(x: torch.Tensor, generator: torch.Generator, gamma: tuple[float, float] = (0.67, 1.5),
                 probability: float = 1.0) -> torch.Tensor:
    """``x ** g`` per sample, ``g`` log-uniform in ``gamma``: a camera's tone curve.

    Args:
        x: ``(B, C, H, W)`` intensities in [0, 1] (``max`` or ``unit`` normalisation).
        gamma: (low, high) exponent range, ``0 < low <= high``.
        probability: share of the samples changed (the others are returned as they are).

    Returns:
        ``(B, C, H, W)`` in [0, 1].
    """
    if not 0 < gamma[0] <= gamma[1]:
        raise ValueError(f"random_gamma: need 0 < low <= high, got {gamma}")
    apply = _applied(x, probability, generator)
    g = _log_uniform(x.shape[0], gamma[0], gamma[1], generator)
    out = x.clamp(0, 1) ** g.view(-1, 1, 1, 1).to(x)
    return torch.where(apply.view(-1, 1, 1, 1).to(x.device), out, x)


def saturation_hue(x: torch.Tensor, generator: torch.Generator, saturation: tuple[float, float] = (0.7, 1.3),
                   hue: float = 10.0, probability: float = 1.0) -> torch.Tensor:
    """Saturation scaled and hue rotated per sample around the grey axis, keeping the luma.

    In YIQ (ITU-R 601 luma Y, chroma I and Q) the chroma vector is scaled by ``s`` (uniform in
    ``saturation``) and rotated by an angle uniform in ``[-hue, hue]`` degrees; greys and the luma of
    every pixel are unchanged. One 3x3 colour matrix per sample. Grayscale input is returned as is.

    Args:
        x: ``(B, 3, H, W)`` intensities in [0, 1].

    Returns:
        ``(B, 3, H, W)`` clipped to [0, 1].
    """
    b = x.shape[0]
    apply = _applied(x, probability, generator)
    s = _uniform(b, saturation[0], saturation[1], generator).double()
    angle = _uniform(b, -hue, hue, generator).double() * math.pi / 180
    if x.shape[1] != 3 or not bool(apply.any()):
        return x
    chroma = torch.zeros(b, 3, 3, dtype=torch.float64)
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1], chroma[:, 1, 2] = s * torch.cos(angle), -s * torch.sin(angle)
    chroma[:, 2, 1], chroma[:, 2, 2] = s * torch.sin(angle), s * torch.cos(angle)
    matrix = torch.linalg.inv(_RGB_TO_YIQ) @ chroma @ _RGB_TO_YIQ  # (B, 3, 3)
    out = torch.einsum("bij,bjhw->bihw", matrix.to(x), x).clamp(0, 1)
    return torch.where(apply.view(-1, 1, 1, 1).to(x.device), out, x)


def downscale_upscale(x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.25, 0.75),
                      probability: float = 1.0) -> torch.Tensor:
    """A low-resolution camera: each chosen sample averaged down to ``f`` of its side (``f`` uniform
    in ``scale``) and resized back bilinearly.

    Args:
        x: ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)``.
    """
    b, _, h, w = x.shape
    apply = _applied(x, probability, generator)
    factors = _uniform(b, scale[0], scale[1], generator)
    out = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        f = float(factors[i])
        small = (max(1, int(round(h * f))), max(1, int(round(w * f))))
        low = F.interpolate(x[i:i + 1], size=small, mode="area")
        out[i:i + 1] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return out


def jpeg_recompress(x: torch.Tensor, generator: torch.Generator, quality: tuple[int, int] = (30, 90),
                    probability: float = 1.0) -> torch.Tensor:
    """JPEG compression artefacts: each chosen sample quantised to 8 bits, encoded as a JPEG of
    quality uniform in ``quality`` (integers, inclusive; OpenCV's libjpeg with 4:2:0 chroma
    subsampling) and decoded, on the CPU.

    Args:
        x: ``(B, C, H, W)`` intensities in [0, 1], C = 1 or 3 (RGB).

    Returns:
        ``(B, C, H, W)`` in [0, 1] (multiples of 1/255 where changed).
    """
    import cv2

    b, c = x.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"jpeg_recompress: needs 1 or 3 channels, got {c}")
    if not 1 <= quality[0] <= quality[1] <= 100:
        raise ValueError(f"jpeg_recompress: need 1 <= low <= high <= 100, got {quality}")
    apply = _applied(x, probability, generator)
    qualities = torch.randint(int(quality[0]), int(quality[1]) + 1, (b,), generator=generator)
    out = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        image = (x[i].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = image[..., ::-1] if c == 3 else image[..., 0]  # OpenCV encodes BGR
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(qualities[i])])
        if not ok:
            raise RuntimeError("jpeg_recompress: OpenCV could not encode the sample")
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        decoded = decoded[..., ::-1] if c == 3 else decoded[..., None]
        out[i] = torch.from_numpy(np.ascontiguousarray(decoded)).permute(2, 0, 1).to(x) / 255.0
    return out


def vignetting(x: torch.Tensor, generator: torch.Generator, strength: tuple[float, float] = (0.0, 0.5),
               offset: float = 0.2, probability: float = 1.0) -> torch.Tensor:
    """Uneven illumination: each chosen sample multiplied by ``max(0, 1 - k r^2)``, ``k`` uniform in
    ``strength``, ``r`` the distance to a centre shifted by up to ``offset`` (uniform per axis), in
    units of half the image side (so ``r = 1`` at the middle of an edge for a centred vignette).

    Args:
        x: ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)`` (never brighter than ``x`` for non-negative ``x``).
    """
    b, _, h, w = x.shape
    apply = _applied(x, probability, generator)
    k = _uniform(b, strength[0], strength[1], generator) * apply
    cx = _uniform(b, -offset, offset, generator)
    cy = _uniform(b, -offset, offset, generator)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    r2 = (xs.view(1, 1, w) - cx.view(b, 1, 1)) ** 2 + (ys.view(1, h, 1) - cy.view(b, 1, 1)) ** 2
    gain = (1 - k.view(b, 1, 1) * r2).clamp(min=0)
    return torch.where(apply.view(-1, 1, 1, 1).to(x.device), x * gain.unsqueeze(1).to(x), x)


class AcquisitionAugmentConfig(BaseModel):
    """Acquisition augmentation: what another camera does to a fundus photograph.

    Each augmentation changes a random share of the samples (its ``*_probability``) with a
    parameter drawn per sample from its range. Every probability is 0 by default (off), and an
    augmentation that is off draws nothing from the generator, so referencing this section with its
    defaults changes no seeded run. Applied in this order by :func:`acquisition_augment`: blur,
    downscale-upscale (optics and resolution), vignetting (illumination), gamma, saturation/hue
    (tone and colour), JPEG recompression (storage). For intensities in [0, 1].

    Attributes:
        blur_probability, blur_sigma: Gaussian blur, sigma range in pixels (:func:`gaussian_blur`).
        downscale_probability, downscale: down-then-up resampling, range of the side factor.
        vignetting_probability, vignetting, vignetting_offset: radial fall-off ``1 - k r^2``, range
            of ``k`` and the largest centre shift (:func:`vignetting`).
        gamma_probability, gamma: tone curve ``x ** g``, log-uniform range of ``g``.
        saturation_hue_probability, saturation, hue: saturation factor range and largest hue
            rotation in degrees (:func:`saturation_hue`).
        jpeg_probability, jpeg_quality: JPEG recompression, quality range (inclusive).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    blur_probability: float = Field(0.0, ge=0, le=1)
    blur_sigma: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.0)
    downscale_probability: float = Field(0.0, ge=0, le=1)
    downscale: tuple[float, float] = (0.25, 0.75)
    vignetting_probability: float = Field(0.0, ge=0, le=1)
    vignetting: tuple[float, float] = (0.0, 0.5)
    vignetting_offset: float = Field(0.2, ge=0, le=1)
    gamma_probability: float = Field(0.0, ge=0, le=1)
    gamma: tuple[PositiveFloat, PositiveFloat] = (0.67, 1.5)
    saturation_hue_probability: float = Field(0.0, ge=0, le=1)
    saturation: tuple[float, float] = (0.7, 1.3)
    hue: float = Field(10.0, ge=0, le=180)
    jpeg_probability: float = Field(0.0, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (30, 90)

    @model_validator(mode="after")
    def _check_ranges(self) -> AcquisitionAugmentConfig:
        for name in ("blur_sigma", "downscale", "vignetting", "gamma", "saturation", "jpeg_quality"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low {low} > high {high}")
        if not (0 < self.downscale[0] and self.downscale[1] <= 1):
            raise ValueError(f"downscale factors must be in (0, 1], got {self.downscale}")
        if not (0 <= self.vignetting[0] and self.vignetting[1] <= 1):
            raise ValueError(f"vignetting strengths must be in [0, 1], got {self.vignetting}")
        if self.saturation[0] < 0:
            raise ValueError(f"saturation factors must be >= 0, got {self.saturation}")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        return self

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return any(getattr(self, name) > 0 for name in type(self).model_fields if name.endswith("_probability"))


UNIT_RANGE_NORMALIZATIONS = ("max", "unit")  # preprocess.normalize modes whose images lie in [0, 1]


def check_acquisition_inputs(method: Mapping[str, Any] | None, preprocess: Any, key: str,
                             published: str | None = None) -> None:
    """Refuse acquisition augmentation (``method.acquisition``, any probability above 0) on images that
    are not intensities in [0, 1]: it clips its input to [0, 1], so on z-scored images (``normalize:
    image``, ``imagenet``, ``meanstd``) the training images would lose every value below the mean while
    the validation and test images keep theirs, and the model learns inputs it never sees again (an
    IDRiD whole-image training so configured ended at a constant output, test AUC 0.500).

    Args:
        method: the method's settings (``{"name": ..., "acquisition": {...}}``).
        preprocess: the job's :class:`~retinassl.data.preprocess.PreprocessConfig`.
        key: where ``method`` sits in the config, for the message.
        published: ``model.weights`` when a published model fixes the normalisation.

    Raises:
        ValueError: naming ``key`` and the normalisation (a config validator turns it into a
            ConfigError).
    """
    acquisition = (method or {}).get("acquisition")
    try:
        enabled = acquisition is not None and AcquisitionAugmentConfig.model_validate(acquisition).enabled
    except ValueError:  # malformed: the method's own config validation names the problem
        return
    if not enabled:
        return
    if published is not None:
        raise ValueError(f"{key}.acquisition works on images in [0, 1], but the published model {published!r} "
                         f"(model.weights) takes inputs normalised its own way: turn the acquisition augmentation "
                         f"off for it")
    if preprocess.normalize not in UNIT_RANGE_NORMALIZATIONS:
        raise ValueError(f"{key}.acquisition works on images in [0, 1], but preprocess.normalize is "
                         f"{preprocess.normalize!r}: set it to {' or '.join(UNIT_RANGE_NORMALIZATIONS)} (the training "
                         f"images would be clipped to [0, 1] while validation and test images are not)")


def acquisition_augment(x: torch.Tensor, config: AcquisitionAugmentConfig | None,
                        generator: torch.Generator) -> torch.Tensor:
    """The acquisition augmentations of ``config`` on a batch (see :class:`AcquisitionAugmentConfig`).

    Args:
        x: ``(B, C, H, W)`` intensities in [0, 1] (``max`` or ``unit`` normalisation).
        config: which augmentations; None or all off: ``x`` itself, nothing drawn.
        generator: a CPU ``torch.Generator``; the same state gives the same batch.

    Returns:
        ``(B, C, H, W)`` in [0, 1] (or ``x`` unchanged).
    """
    if config is None or not config.enabled:
        return x
    c = config
    x = x.clamp(0, 1)
    if c.blur_probability > 0:
        x = gaussian_blur(x, generator, c.blur_sigma, c.blur_probability)
    if c.downscale_probability > 0:
        x = downscale_upscale(x, generator, c.downscale, c.downscale_probability)
    if c.vignetting_probability > 0:
        x = vignetting(x, generator, c.vignetting, c.vignetting_offset, c.vignetting_probability)
    if c.gamma_probability > 0:
        x = random_gamma(x, generator, c.gamma, c.gamma_probability)
    if c.saturation_hue_probability > 0:
        x = saturation_hue(x, generator, c.saturation, c.hue, c.saturation_hue_probability)
    if c.jpeg_probability > 0:
        x = jpeg_recompress(x, generator, c.jpeg_quality, c.jpeg_probability)
    return x.clamp(0, 1)

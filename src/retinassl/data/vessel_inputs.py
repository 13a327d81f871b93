"""Vessel-segmentation inputs: green-channel/CLAHE preprocessing, whole-image datasets, and seeded
random patches sampled inside the field of view.

Preprocessing follows the vessel literature: the green channel ("the green channel of the RGB image
shows the best vessel/background contrast", Staal et al. 2004), contrast-limited adaptive histogram
equalisation (CLAHE), then zero mean and unit variance inside the FOV (per image, which also absorbs
most of the camera differences between datasets). ``channels: rgb`` keeps all three colours (for
encoders pretrained on colour photographs); a 1-channel input is repeated for 3-channel encoders by
:func:`retinassl.models.segmentation.match_channels`.

Training items are whole images (cached at a fixed size); patches are cut inside the method's loss
with the engine's per-batch generator (:func:`sample_patches`): patch centres are drawn uniformly
among FOV pixels, so a resumed run repeats the same patches, and the number of patches per epoch
does not depend on how many images are labelled (an "epoch" is ``samples_per_epoch`` image draws).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset

from retinassl.config import Section
from retinassl.data import augment
from retinassl.data.cache import PreparedData
from retinassl.errors import DataError


class InputConfig(Section):
    """How a cached RGB image becomes the network input.

    Attributes:
        channels: ``green`` (1 channel), ``gray`` (luminance, 1 channel) or ``rgb`` (3 channels).
        clahe: CLAHE on each input channel (before standardisation).
        clahe_clip: CLAHE clip limit. clahe_tiles: CLAHE tiles per side.
        gamma: gamma correction after CLAHE (1: none).
        normalize: ``fov`` (zero mean, unit variance inside the FOV, per image and channel),
            ``max`` (divided by the image's maximum, as the pretraining presets normalise: use it
            with encoders pretrained that way) or ``unit`` (divided by 255).
    """

    channels: Literal["green", "gray", "rgb"] = "green"
    clahe: bool = True
    clahe_clip: float = Field(2.0, gt=0)
    clahe_tiles: int = Field(8, ge=1)
    gamma: float = Field(1.0, gt=0)
    normalize: Literal["fov", "max", "unit"] = "fov"

    @property
    def num_channels(self) -> int:
        return 3 if self.channels == "rgb" else 1


def network_input(image: np.ndarray, fov: np.ndarray, config: InputConfig) -> np.ndarray:
    """A uint8 fundus image -> float32 ``(C, H, W)`` network input, zero outside the FOV.

    Args:
        image: ``(H, W, 3)`` RGB (or ``(H, W)`` grayscale) uint8.
        fov: ``(H, W)`` bool field of view.
        config: the input settings.
    """
    image = np.asarray(image)
    fov = np.asarray(fov, dtype=bool)
    if image.shape[:2] != fov.shape:
        raise ValueError(f"image {image.shape} and FOV {fov.shape} differ in size")
    if image.ndim == 2:
        planes = [image] * (3 if config.channels == "rgb" else 1)
    elif config.channels == "green":
        planes = [image[..., 1]]
    elif config.channels == "gray":
        planes = [cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)]
    else:
        planes = [image[..., c] for c in range(3)]
    out = []
    for plane in planes:
        plane = np.ascontiguousarray(plane, dtype=np.uint8)
        if config.clahe:
            clahe = cv2.createCLAHE(clipLimit=config.clahe_clip,
                                    tileGridSize=(config.clahe_tiles, config.clahe_tiles))
            plane = clahe.apply(plane)
        x = plane.astype(np.float32) / 255.0
        if config.gamma != 1.0:
            x = np.power(x, config.gamma)
        if config.normalize == "fov":
            inside = x[fov] if fov.any() else x.reshape(-1)
            x = (x - inside.mean()) / max(float(inside.std()), 1e-6)
        out.append(x)
    x = np.stack(out)
    if config.normalize == "max":
        x = x / max(float(x.max()), 1e-6)
    return np.where(fov, x, 0.0).astype(np.float32)


@dataclass
class VesselImages:
    """Network inputs, vessel masks and FOVs of some images, in memory.

    Attributes:
        ids: manifest ids. rows: rows in the prepared data.
        images: ``(C, S, S)`` float32 each. vessels, fovs: ``(S, S)`` bool each.
    """

    ids: list[str]
    rows: list[int]
    images: list[np.ndarray]
    vessels: list[np.ndarray]
    fovs: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def load_vessel_images(prepared: PreparedData, rows: Sequence[int], config: InputConfig,
                       column: str = "mask_vessels", require_mask: bool = True) -> VesselImages:
    """Read cached images (and their ``column`` masks) of ``rows`` and make network inputs.

    Raises:
        DataError: a row without a vessel mask (when ``require_mask``), naming it.
    """
    frame = prepared.manifest.frame
    ids, images, vessels, fovs = [], [], [], []
    for r in rows:
        entry = prepared.entries[int(r)]
        fov = np.array(entry.fov(), dtype=bool)
        mask = entry.mask(column)
        if mask is None:
            if require_mask:
                raise DataError(f"no {column} mask for this image: it cannot be used to train or "
                                f"evaluate vessel segmentation", path=prepared.manifest.name,
                                row=int(r), item=str(frame.at[int(r), "id"]))
            mask = np.zeros_like(fov)
        images.append(network_input(np.asarray(entry.image()), fov, config))
        vessels.append(np.asarray(mask, dtype=bool) & fov)
        fovs.append(fov)
        ids.append(str(frame.at[int(r), "id"]))
    return VesselImages(ids, [int(r) for r in rows], images, vessels, fovs)


class VesselImageDataset(Dataset):
    """Whole training images, drawn ``length`` times per epoch (item ``i`` is image ``i % N``).

    Items: ``image`` ``(C, S, S)`` float32, ``target`` (the vessel mask) and ``fov`` ``(1, S, S)`` float32 (0/1),
    ``index`` (position in ``images``).
    """

    def __init__(self, images: VesselImages, length: int | None = None) -> None:
        if len(images) == 0:
            raise DataError("no training images with vessel masks")
        shapes = {im.shape for im in images.images}
        if len(shapes) != 1:
            raise DataError(f"training images differ in size {sorted(shapes)}: cache them at one "
                            f"size (preprocess.size)")
        self.images = images
        self.length = int(length or len(images))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.images)
        return {"image": torch.from_numpy(self.images.images[i]),
                "target": torch.from_numpy(self.images.vessels[i]).float()[None],
                "fov": torch.from_numpy(self.images.fovs[i]).float()[None],
                "index": i}


def _fov_centres(fov: torch.Tensor, n: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``n`` pixels drawn uniformly from the FOV ``(H, W)`` (rejection sampling: uniform candidates
    over the image, the first ``n`` inside are kept; a FOV too small for that falls back to an
    exact draw among its pixels, and an empty one to the whole image)."""
    h, w = fov.shape
    candidates = torch.randint(h * w, (8 * n + 64,), generator=generator)
    inside = candidates[fov.reshape(-1)[candidates] > 0.5][:n]
    if len(inside) < n:
        pixels = torch.nonzero(fov.reshape(-1) > 0.5)[:, 0]
        if len(pixels) == 0:
            pixels = torch.arange(h * w)
        inside = pixels[torch.randint(len(pixels), (n,), generator=generator)]
    return [(int(i) // w, int(i) % w) for i in inside]


def sample_patches(image: torch.Tensor, target: torch.Tensor, fov: torch.Tensor, patch_size: int,
                   per_image: int, generator: torch.Generator,
                   geometric: Literal["none", "dihedral", "affine"] = "affine",
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random square patches centred on FOV pixels, with geometric augmentation.

    Args:
        image: ``(B, C, H, W)`` network inputs. target (vessels, lesions), fov: ``(B, 1, H, W)`` 0/1.
        patch_size: side of the returned patches.
        per_image: patches cut from each image.
        generator: the engine's per-batch generator (all randomness comes from it).
        geometric: ``dihedral`` (flips and 90-degree rotations: masks stay exact), ``affine`` (any
            rotation, 0.9-1.1 scale, flips: a 1.5x larger window is resampled bilinearly so the
            patch has no empty corners, and the target becomes the resampled, soft
            (partial-pixel) mask), or ``none``.

    Returns:
        ``(B * per_image, C, P, P)`` inputs, ``(B * per_image, 1, P, P)`` targets in [0, 1]
        and FOV masks (0/1).
    """
    b, c, h, w = image.shape
    side = int(np.ceil(patch_size * 1.5)) if geometric == "affine" else patch_size
    half = side // 2
    crops = []
    for k in range(b):
        for y, x in _fov_centres(fov[k, 0], per_image, generator):
            y0, x0 = y - half, x - half  # the window [y0, y0 + side) may leave the image: zero-pad
            ys, xs = slice(max(0, y0), min(h, y0 + side)), slice(max(0, x0), min(w, x0 + side))
            window = torch.cat([image[k, :, ys, xs].float(), target[k, :, ys, xs].float(),
                                fov[k, :, ys, xs].float()])
            pad = (xs.start - x0, x0 + side - xs.stop, ys.start - y0, y0 + side - ys.stop)
            crops.append(F.pad(window, pad) if any(pad) else window)
    crops = torch.stack(crops)
    if geometric == "affine":
        crops = augment.random_affine(crops, generator, degrees=180.0, scale=(0.9, 1.1), translate=0.0)
        start = (side - patch_size) // 2
        crops = crops[..., start:start + patch_size, start:start + patch_size]
    elif geometric == "dihedral":
        crops = augment.dihedral(crops, generator)
    x = crops[:, :c].contiguous()
    y = crops[:, c:c + 1].clamp(0, 1).contiguous()
    inside = (crops[:, c + 1:c + 2] > 0.5).float()
    return x, y * inside, inside

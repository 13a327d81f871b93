"""Patches of many images held in memory, and the datasets the patch methods train on.

Lecouat et al. 2018 cut each image "into non-overlapping 128x128 patches based on a uniform 8x8
grid" and "downsampled the patches to 32x32"; they augmented with "random cropping and flipping".
A :class:`PatchBank` stores, for every grid cell of every image, a *window*: the cell plus a context
margin on each side (zeros beyond the image border), already resized so that the cell is
``patch_size`` pixels, as uint8. A random crop of ``patch_size`` from the window is the cell
shifted by up to ``margin`` pixels (the paper's random crop); its centre crop is the cell itself.
Images are decoded once from the preprocessed cache, resized once (the cell boundaries fall on
whole output pixels, so resizing the whole image equals resizing each cell), and normalised when an
item is read with the per-image affine map of the preprocessing's ``normalize`` mode.

Patch labels come from :class:`retinassl.data.datasets.PatchDataset` (the union of the lesion
masks; a patch with ``>= min_pixels`` lesion pixels is diseased; an image labelled healthy without
masks has only healthy patches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from retinassl.data.cache import PreparedData
from retinassl.data.datasets import PatchDataset
from retinassl.data.preprocess import Normalization, normalize


@dataclass
class PatchBank:
    """Windows around the grid cells of a set of images.

    Attributes:
        windows: ``(N, C, W, W)`` uint8, ``N = n_images * grid**2`` (image-major, cells row-major),
            ``W = patch_size + 2 * margin``.
        scale, offset: ``(n_images, C)`` float32: normalised value = ``pixel * scale + offset``.
        labels: ``(N,)`` int64 patch labels, or None for unlabelled banks.
        rows: ``(n_images,)`` rows of the prepared data the images come from.
        grid, patch_size, margin: the grid and the window geometry.
        fov: ``(N,)`` float32 fraction of each cell inside the image's field of view (the
            cache's FOV mask), or None when unknown.
    """

    windows: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    labels: np.ndarray | None
    rows: np.ndarray
    grid: int
    patch_size: int
    margin: int
    fov: np.ndarray | None = None

    @property
    def per_image(self) -> int:
        return self.grid * self.grid

    @property
    def n_images(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def window(self, index: int) -> torch.Tensor:
        """Normalised window ``(C, W, W)`` float32 of patch ``index``."""
        image = index // self.per_image
        return (self.windows[index].float() * self.scale[image, :, None, None]
                + self.offset[image, :, None, None])

    def cell(self, index: int) -> torch.Tensor:
        """Normalised grid cell ``(C, patch_size, patch_size)`` (the window's centre)."""
        m, p = self.margin, self.patch_size
        image = index // self.per_image
        return (self.windows[index, :, m:m + p, m:m + p].float() * self.scale[image, :, None, None]
                + self.offset[image, :, None, None])

    def images(self, positions: Sequence[int] | np.ndarray) -> PatchBank:
        """The bank restricted to the images at ``positions`` (0-based, into :attr:`rows`)."""
        positions = np.asarray(positions, dtype=int)
        patches = (positions[:, None] * self.per_image + np.arange(self.per_image)).reshape(-1)
        index = torch.from_numpy(patches)
        return PatchBank(self.windows[index], self.scale[positions], self.offset[positions],
                         None if self.labels is None else self.labels[patches], self.rows[positions],
                         self.grid, self.patch_size, self.margin,
                         None if self.fov is None else self.fov[patches])

    def image_labels(self) -> np.ndarray:
        """``(n_images, grid**2)`` patch labels."""
        if self.labels is None:
            raise ValueError("this patch bank has no labels")
        return self.labels.reshape(-1, self.per_image)


def concat_banks(banks: Sequence[PatchBank]) -> PatchBank:
    """Banks of the same geometry joined image-wise (labels kept only if every bank has them)."""
    first = banks[0]
    for b in banks[1:]:
        if (b.grid, b.patch_size, b.margin) != (first.grid, first.patch_size, first.margin):
            raise ValueError("cannot join patch banks of different grids or window sizes")
    labelled = all(b.labels is not None for b in banks)
    with_fov = all(b.fov is not None for b in banks)
    return PatchBank(torch.cat([b.windows for b in banks]), torch.cat([b.scale for b in banks]),
                     torch.cat([b.offset for b in banks]),
                     np.concatenate([b.labels for b in banks]) if labelled else None,  # type: ignore[misc]
                     np.concatenate([b.rows for b in banks]), first.grid, first.patch_size,
                     first.margin,
                     np.concatenate([b.fov for b in banks]) if with_fov else None)  # type: ignore[misc]


def normalisation_affine(mode: str | Normalization, stats: dict, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(scale, offset)`` with ``normalize(x, mode, stats) == x * scale + offset``.

    Every normalisation mode is affine in the pixel value, so probing it at 0 and 1 recovers it
    exactly (and keeps :func:`retinassl.data.preprocess.normalize` the one definition).
    """
    zero = normalize(np.zeros((1, 1, channels), dtype=np.uint8), mode, stats)[:, 0, 0]
    one = normalize(np.ones((1, 1, channels), dtype=np.uint8), mode, stats)[:, 0, 0]
    return (one - zero).astype(np.float32), zero.astype(np.float32)


def cell_fov_fractions(prepared: PreparedData, rows: Sequence[int] | np.ndarray, grid: int = 8) -> np.ndarray:
    """``(len(rows), grid**2)`` fraction of each grid cell (row-major) inside its image's field of
    view (the cache's FOV mask)."""
    size = prepared.config.size
    if size % grid:
        raise ValueError(f"image size {size} is not divisible by the {grid}x{grid} grid")
    cell = size // grid
    out = np.zeros((len(rows), grid * grid), dtype=np.float32)
    for i, row in enumerate(np.asarray(rows, dtype=int)):
        inside = np.asarray(prepared.entries[int(row)].fov(), dtype=np.float32).reshape(grid, cell, grid, cell)
        out[i] = inside.mean(axis=(1, 3)).ravel()
    return out


def build_patch_bank(prepared: PreparedData, rows: Sequence[int] | np.ndarray, grid: int = 8,
                     patch_size: int = 32, margin: int = 0, labelled: bool = True,
                     min_pixels: int = 1) -> PatchBank:
    """Cut the images at ``rows`` into a :class:`PatchBank`.

    Args:
        prepared: cached images (and masks, for labels).
        rows: rows of ``prepared``.
        grid: cells per side (8).
        patch_size: side of a cell after resizing (32 in the paper).
        margin: context pixels (at the resized scale) around each cell, for random crops.
        labelled: compute patch labels (every row must have lesion masks or a healthy label).
        min_pixels: lesion pixels that make a patch diseased.
    """
    rows = np.asarray(rows, dtype=int)
    fov = cell_fov_fractions(prepared, rows, grid)
    side = grid * patch_size
    w = patch_size + 2 * margin
    channels = prepared.config.channels
    windows = np.zeros((len(rows), grid * grid, w, w, channels), dtype=np.uint8)
    scale = np.zeros((len(rows), channels), dtype=np.float32)
    offset = np.zeros((len(rows), channels), dtype=np.float32)
    for i, row in enumerate(rows):
        entry = prepared.entries[int(row)]
        image = np.asarray(entry.image())
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[0] != side:
            interp = cv2.INTER_AREA if image.shape[0] > side else cv2.INTER_LINEAR
            image = cv2.resize(image, (side, side), interpolation=interp)
            if image.ndim == 2:
                image = image[..., None]
        padded = np.pad(image, ((margin, margin), (margin, margin), (0, 0)))
        for j in range(grid * grid):
            y, x = divmod(j, grid)
            windows[i, j] = padded[y * patch_size:y * patch_size + w, x * patch_size:x * patch_size + w]
        scale[i], offset[i] = normalisation_affine(prepared.config.normalization(), entry.stats, channels)
    labels = None
    if labelled:
        labels = PatchDataset(prepared, grid, patch_size, rows, labelled=True,
                              min_pixels=min_pixels).labels
    tensor = torch.from_numpy(windows.reshape(-1, w, w, channels)).permute(0, 3, 1, 2).contiguous()
    return PatchBank(tensor, torch.from_numpy(scale), torch.from_numpy(offset), labels, rows, grid,
                     patch_size, margin, fov.reshape(-1))


class LabelledPatches(Dataset):
    """Grid cells of a labelled bank: items ``{"image": (C, p, p), "label": int64, "index"}``; with
    ``image_labels``, also ``"image_index"`` and ``"image_label"`` (the image of the bank the cell
    belongs to and that image's label, so that a validation can score whole images).

    Args:
        bank: the labelled patches.
        length: dataset length (default: the bank's); item ``i`` is patch ``i mod len(bank)``, so
            a supervised epoch can show as many patches as an SSL-GAN epoch (one pass over all
            training patches) however few images are labelled.
        image_labels: ``(n_images,)`` 0/1 label of each image of the bank (e.g. the manifest's).
    """

    def __init__(self, bank: PatchBank, length: int | None = None, image_labels: np.ndarray | None = None) -> None:
        if bank.labels is None:
            raise ValueError("LabelledPatches needs a labelled patch bank")
        if image_labels is not None and len(image_labels) != bank.n_images:
            raise ValueError(f"{len(image_labels)} image labels for a bank of {bank.n_images} images")
        self.bank = bank
        self.length = len(bank) if length is None else int(length)
        self.image_labels = None if image_labels is None else np.asarray(image_labels, dtype=int)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        j = index % len(self.bank)
        item = {"image": self.bank.cell(j), "label": torch.tensor(int(self.bank.labels[j])),  # type: ignore[index]
                "index": index}
        if self.image_labels is not None:
            image = j // self.bank.per_image
            item.update(image_index=image, image_label=int(self.image_labels[image]))
        return item


class PatchesAndBags(Dataset):
    """Labelled patches and image-level labelled *bags* in one dataset, for a supervised learner
    that also learns from images with an image grade but no lesion masks.

    Items ``0 .. len(patches) - 1`` are the items of ``patches``; the next ``bags.n_images`` items
    are bags: ``{"bag": (grid**2, C, p, p), "bag_label"}``, the grid cells of one image of ``bags``
    and its label. A shuffled epoch thus mixes every bag once among the patches;
    :func:`collate_patches_and_bags` batches them.
    """

    def __init__(self, patches: LabelledPatches, bags: PatchBank, bag_labels: np.ndarray) -> None:
        bag_labels = np.asarray(bag_labels, dtype=int)
        if len(bag_labels) != bags.n_images:
            raise ValueError(f"{len(bag_labels)} bag labels for {bags.n_images} bag images")
        if (bags.patch_size, bags.grid) != (patches.bank.patch_size, patches.bank.grid):
            raise ValueError("bags and labelled patches must have the same grid and patch size")
        self.patches, self.bags, self.bag_labels = patches, bags, bag_labels

    def __len__(self) -> int:
        return len(self.patches) + self.bags.n_images

    def __getitem__(self, index: int) -> dict:
        if index < len(self.patches):
            return self.patches[index]
        image = index - len(self.patches)
        first = image * self.bags.per_image
        return {"bag": torch.stack([self.bags.cell(first + j) for j in range(self.bags.per_image)]),
                "bag_label": torch.tensor(int(self.bag_labels[image]))}


def collate_patches_and_bags(items: list[dict]) -> dict:
    """Batch of :class:`PatchesAndBags` items: ``image``, ``label``, ``index`` of the patches
    (possibly none) and, when the batch holds bags, ``bag_image`` ``(nb, K, C, p, p)`` and
    ``bag_label`` ``(nb,)``."""
    patches = [item for item in items if "bag" not in item]
    bags = [item for item in items if "bag" in item]
    shape = (bags or patches)[0]["bag" if bags else "image"].shape[-3:]
    batch = {"image": torch.stack([i["image"] for i in patches]) if patches else torch.zeros((0, *shape)),
             "label": torch.stack([i["label"] for i in patches]) if patches else torch.zeros(0, dtype=torch.long),
             "index": torch.tensor([i["index"] for i in patches], dtype=torch.long)}
    if bags:
        batch["bag_image"] = torch.stack([i["bag"] for i in bags])
        batch["bag_label"] = torch.stack([i["bag_label"] for i in bags])
    return batch


class SemiSupervisedPatches(Dataset):
    """One dataset for the SSL-GAN: item ``i`` is unlabelled window ``i`` with labelled window
    ``order[i mod n_labelled]`` and its label (``order`` a fixed permutation from ``seed``).

    An epoch is one pass over the unlabelled patches (all training patches, labelled ones
    included); the labelled patches are cycled so that every batch holds as many labelled as
    unlabelled patches, as in Salimans et al. 2016. ``keep`` (indices into ``unlabelled``)
    restricts the unlabelled patches (see :func:`in_field_of_view`).

    Items: ``unlabelled`` ``(C, W, W)``, ``labelled`` ``(C, W, W)``, ``label`` int64, ``index``.
    """

    def __init__(self, unlabelled: PatchBank, labelled: PatchBank, seed: int = 0,
                 keep: np.ndarray | None = None) -> None:
        if labelled.labels is None or len(labelled) == 0:
            raise ValueError("SemiSupervisedPatches needs a non-empty labelled patch bank")
        if (unlabelled.patch_size, unlabelled.margin) != (labelled.patch_size, labelled.margin):
            raise ValueError("labelled and unlabelled windows must have the same geometry")
        self.unlabelled = unlabelled
        self.labelled = labelled
        self.keep = np.arange(len(unlabelled)) if keep is None else np.asarray(keep, dtype=int)
        if len(self.keep) == 0:
            raise ValueError("no unlabelled patch is left")
        self.order = np.random.default_rng(seed).permutation(len(labelled))

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int) -> dict:
        j = int(self.order[index % len(self.order)])
        return {"unlabelled": self.unlabelled.window(int(self.keep[index])),
                "labelled": self.labelled.window(j),
                "label": torch.tensor(int(self.labelled.labels[j])), "index": index}  # type: ignore[index]


def in_field_of_view(bank: PatchBank, min_fov: float) -> np.ndarray:
    """Indices of the patches of ``bank`` whose cell lies at least ``min_fov`` inside the field of
    view (all patches when ``min_fov`` is 0); ValueError when the bank has no FOV fractions."""
    if min_fov <= 0:
        return np.arange(len(bank))
    if bank.fov is None:
        raise ValueError("this patch bank has no field-of-view fractions")
    return np.flatnonzero(bank.fov >= min_fov)

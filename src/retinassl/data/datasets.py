"""Torch datasets over prepared (cached) data.

Datasets are deterministic: item ``i`` is always the same tensor. Random augmentation happens on
whole batches inside a method's loss with the engine's per-batch generator
(:mod:`retinassl.data.augment`), so data order and augmentation are both reproducible and a resumed
run repeats exactly.

Items are dicts: ``image`` ``(C, H, W)`` float32, ``index`` (row in the prepared data), and
``label`` when a label column is given (int64 scalar; float32 ``(K,)`` for several columns);
``target`` and ``fov`` (``(1, H, W)`` float32 0/1) when an :class:`ImageDataset` is given mask
columns to learn (segmentation pretraining).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from retinassl.errors import DataError
from retinassl.data.cache import PreparedData
from retinassl.data.manifest import LESION_TYPES, is_missing
from retinassl.data.patches import patch_pixel_counts
from retinassl.data.preprocess import normalize

LESION_MASK_COLUMNS: tuple[str, ...] = tuple(f"mask_{t}" for t in LESION_TYPES)


class _EntryReader:
    """Per-process memo of entries' memory-mapped images and statistics.

    Each open memory map holds a file descriptor, so at most ``max_open`` maps stay open (least
    recently used closed first): a dataset of 20,000 images must not hit the usual limit of 1,024
    open files per process. Statistics (small dicts) are kept for every entry.
    """

    def __init__(self, prepared: PreparedData, max_open: int = 256) -> None:
        self.prepared = prepared
        self.max_open = max_open
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._stats: dict[int, dict] = {}

    def image(self, row: int) -> np.ndarray:
        image = self._images.get(row)
        if image is None:
            image = self._images[row] = self.prepared.entries[row].image()
            if len(self._images) > self.max_open:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(row)
        return image

    def stats(self, row: int) -> dict:
        stats = self._stats.get(row)
        if stats is None:
            stats = self._stats[row] = self.prepared.entries[row].stats
        return stats

    def __getstate__(self) -> dict:  # worker processes reopen their own memory maps
        return {"prepared": self.prepared, "max_open": self.max_open, "_images": OrderedDict(),
                "_stats": self._stats}


def _labels(prepared: PreparedData, columns: Sequence[str] | str | None) -> np.ndarray | None:
    if columns is None:
        return None
    if isinstance(columns, str):
        return prepared.manifest.require_labels(columns)
    return np.stack([prepared.manifest.require_labels(c) for c in columns], axis=1).astype(np.float32)


class ImageDataset(Dataset):
    """Whole preprocessed images.

    Args:
        prepared: cached images (:meth:`Cache.prepare`).
        label: a label column (int64 target), a list of columns (multi-hot float target), or None.
        label_map: optional function of the integer label (e.g. ``lambda g: int(g >= 2)`` for
            referable DR).
        size: resize to this side on the fly (default: the cached size).
        regression: ``label`` is a real-valued target (float32; e.g. a retinal thickness).
        target: mask columns whose union is a segmentation target (segmentation pretraining):
            items then also have ``target`` (the union inside the FOV) and ``fov``, ``(1, S, S)``
            float32 0/1 each (not with ``size``).
    """

    def __init__(self, prepared: PreparedData, label: str | Sequence[str] | None = None,
                 label_map=None, size: int | None = None, regression: bool = False,
                 target: Sequence[str] | None = None) -> None:
        if target and size:
            raise ValueError("a segmentation target is read at the cached size: no size")
        self.prepared = prepared
        self.target = tuple(target) if target else None
        self.normalize = prepared.config.normalization()
        if regression and not isinstance(label, str):
            raise ValueError("a regression target is one column")
        labels = prepared.manifest.require_values(label).astype(np.float32) if regression \
            else _labels(prepared, label)
        if labels is not None and label_map is not None:
            labels = np.vectorize(label_map)(labels)
        self.labels = labels
        self.size = size
        self.reader = _EntryReader(prepared)

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, index: int) -> dict:
        image = np.asarray(self.reader.image(index))
        if self.size and image.shape[0] != self.size:
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        item = {"image": torch.from_numpy(normalize(image, self.normalize, self.reader.stats(index))),
                "index": index}
        if self.labels is not None:
            item["label"] = torch.as_tensor(self.labels[index])
        if self.target is not None:
            fov = np.asarray(self.prepared.entries[index].fov(), dtype=bool)
            target = lesion_mask(self.prepared, index, self.target) & fov
            item["target"] = torch.from_numpy(target.astype(np.float32))[None]
            item["fov"] = torch.from_numpy(fov.astype(np.float32))[None]
        return item


def lesion_mask(prepared: PreparedData, row: int, columns: Sequence[str] = LESION_MASK_COLUMNS) -> np.ndarray:
    """Union of the lesion masks of ``row`` (all-false where the row has no lesion masks)."""
    entry = prepared.entries[row]
    size = prepared.config.size
    union = np.zeros((size, size), dtype=bool)
    for column in columns:
        mask = entry.mask(column)
        if mask is not None:
            union |= np.asarray(mask)
    return union


class PatchDataset(Dataset):
    """Patches of a regular ``grid x grid`` grid over each image, with labels from lesion masks.

    Lecouat et al. 2018: patches "based on a uniform 8x8 grid"; a patch with at least ``min_pixels``
    lesion pixels is diseased. Each patch is resized to ``patch_size`` (32 in the paper) and
    normalised with its whole image's statistics.

    Args:
        prepared: cached images and masks.
        grid: patches per side.
        patch_size: side of the returned patch tensor.
        rows: which images (default: all).
        labelled: compute patch labels from the lesion masks (images without any lesion-mask
            column count as healthy only when ``healthy_column`` says so; see below).
        min_pixels: lesion pixels that make a patch diseased.
        healthy_column: a manifest label column (``abnormal``) used to decide that an image without
            lesion masks is healthy (label 0) and all its patches negative; an abnormal image
            without masks cannot be patch-labelled and raises DataError.

    Items: ``image`` ``(C, patch_size, patch_size)``, ``label`` (0/1, when labelled),
    ``image_index`` (row), ``patch`` (row-major position in the grid), ``index``.
    """

    def __init__(self, prepared: PreparedData, grid: int = 8, patch_size: int = 32,
                 rows: Sequence[int] | None = None, labelled: bool = True, min_pixels: int = 1,
                 healthy_column: str = "abnormal") -> None:
        self.prepared = prepared
        self.grid = grid
        self.patch_size = patch_size
        self.rows = np.arange(len(prepared)) if rows is None else np.asarray(rows, dtype=int)
        size = prepared.config.size
        if size % grid:
            raise DataError(f"image size {size} is not divisible by the {grid}x{grid} patch grid")
        self.cell = size // grid
        self.normalize = prepared.config.normalization()
        self.reader = _EntryReader(prepared)
        self.labels: np.ndarray | None = None
        if labelled:
            self.labels = np.stack([self.patch_labels(int(r), min_pixels, healthy_column)
                                    for r in self.rows]).reshape(-1) if len(self.rows) else \
                np.zeros(0, dtype=np.int64)

    def patch_labels(self, row: int, min_pixels: int = 1, healthy_column: str = "abnormal") -> np.ndarray:
        """``(grid*grid,)`` int64 patch labels of one image (row-major)."""
        frame = self.prepared.manifest.frame
        has_masks = any(c in frame.columns and not is_missing(frame.at[row, c])
                        for c in LESION_MASK_COLUMNS)
        if not has_masks:
            label = frame.at[row, healthy_column] if healthy_column in frame.columns else None
            if is_missing(label):
                raise DataError("image has no lesion masks and no abnormal label: its patches "
                                "cannot be labelled", row=row, item=str(frame.at[row, "id"]))
            if int(float(label)) != 0:
                raise DataError("abnormal image without lesion masks: its patches cannot be "
                                "labelled (use it as unlabelled data)", row=row,
                                item=str(frame.at[row, "id"]))
            return np.zeros(self.grid * self.grid, dtype=np.int64)
        counts = patch_pixel_counts(lesion_mask(self.prepared, row), self.grid)
        return (counts.reshape(-1) >= min_pixels).astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows) * self.grid * self.grid

    def __getitem__(self, index: int) -> dict:
        per_image = self.grid * self.grid
        row = int(self.rows[index // per_image])
        patch = index % per_image
        py, px = divmod(patch, self.grid)
        c = self.cell
        pixels = np.asarray(self.reader.image(row)[py * c:(py + 1) * c, px * c:(px + 1) * c])
        if c != self.patch_size:
            interp = cv2.INTER_AREA if c > self.patch_size else cv2.INTER_LINEAR
            pixels = cv2.resize(pixels, (self.patch_size, self.patch_size), interpolation=interp)
        item = {"image": torch.from_numpy(normalize(pixels, self.normalize, self.reader.stats(row))),
                "image_index": row, "patch": patch, "index": index}
        if self.labels is not None:
            item["label"] = torch.as_tensor(self.labels[index])
        return item

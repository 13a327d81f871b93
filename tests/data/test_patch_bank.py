"""Patch labels from lesion masks (counted by hand), windows with context margins, normalisation,
the SSL-GAN's paired dataset, and patches mixed with image-level bags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinassl.data.cache import Cache
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig, normalize
from retinassl.data.patch_bank import (LabelledPatches, PatchesAndBags, SemiSupervisedPatches,
                                          build_patch_bank, collate_patches_and_bags, concat_banks,
                                          in_field_of_view)
from retinassl.methods.ssl_gan import centre_crop, crop_and_flip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for name in ("dr", "healthy"):
        Image.fromarray(rng.integers(20, 200, (64, 64, 3), dtype=np.uint8)).save(root / f"{name}.png")
    ma = np.zeros((64, 64), np.uint8)
    ma[3, 28] = 255                    # one pixel in cell (0, 3) of the 8x8 grid of 8 px cells
    ex = np.zeros((64, 64), np.uint8)
    ex[17, 9] = ex[18, 10] = 255       # two pixels in cell (2, 1)
    ex[63, 63] = 255                   # one pixel in the last cell (7, 7)
    Image.fromarray(ma).save(root / "dr_MA.png")
    Image.fromarray(ex).save(root / "dr_EX.png")
    manifest = Manifest.from_records([
        {"id": "dr", "image": "dr.png", "abnormal": 1, "mask_MA": "dr_MA.png", "mask_EX": "dr_EX.png"},
        {"id": "healthy", "image": "healthy.png", "abnormal": 0}], root=root)
    config = PreprocessConfig(size=64, crop_fov=False, mask_outside_fov=False, normalize="max")
    return Cache(tmp_path_factory.mktemp("cache")).prepare(manifest, config)


def test_patch_labels_from_masks(prepared) -> None:
    bank = build_patch_bank(prepared, [0, 1], grid=8, patch_size=8)
    labels = bank.image_labels()
    expected = np.zeros(64, dtype=int)
    expected[[0 * 8 + 3, 2 * 8 + 1, 7 * 8 + 7]] = 1    # row-major cells with >= 1 lesion pixel
    assert labels[0].tolist() == expected.tolist()
    assert labels[1].sum() == 0                          # healthy image without masks
    two = build_patch_bank(prepared, [0], grid=8, patch_size=8, min_pixels=2).image_labels()[0]
    assert np.flatnonzero(two).tolist() == [2 * 8 + 1]


def test_windows_cells_and_normalisation(prepared) -> None:
    bank = build_patch_bank(prepared, [0, 1], grid=8, patch_size=8, margin=2)
    assert tuple(bank.windows.shape) == (128, 3, 12, 12)
    image = np.asarray(prepared.entries[1].image())
    expected = normalize(image[8:16, 16:24], "max", prepared.entries[1].stats)   # cell (1, 2)
    j = 64 + 1 * 8 + 2
    assert torch.allclose(bank.cell(j), torch.from_numpy(expected), atol=1e-6)
    assert torch.allclose(centre_crop(bank.window(j)[None], 8)[0], bank.cell(j))
    # the window of cell (0, 0) is zero-padded above and to the left
    assert bank.windows[0, :, :2].sum() == 0 and bank.windows[0, :, :, :2].sum() == 0
    # the margin holds the neighbouring cell's pixels
    right = normalize(image[0:8, 8:10], "max", prepared.entries[1].stats)
    assert torch.allclose(bank.window(64)[:, 2:10, 10:12], torch.from_numpy(right), atol=1e-6)
    # resizing: 64 px image, 4 px cells -> the cell is the 2x2 area average
    small = build_patch_bank(prepared, [1], grid=8, patch_size=4)
    area = image[8:16, 16:24].reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    got = small.windows[1 * 8 + 2].permute(1, 2, 0).numpy().astype(float)
    assert np.abs(got - area).max() <= 0.5 + 1e-9


def test_crop_and_flip_is_seeded_and_stays_inside(prepared) -> None:
    bank = build_patch_bank(prepared, [0], grid=8, patch_size=8, margin=2)
    windows = torch.stack([bank.window(i) for i in range(16)])
    a = crop_and_flip(windows, 8, torch.Generator().manual_seed(3))
    b = crop_and_flip(windows, 8, torch.Generator().manual_seed(3))
    assert a.shape == (16, 3, 8, 8) and torch.equal(a, b)
    for i in range(16):   # every crop (un-flipped in some orientation) is a sub-window
        w = windows[i]
        found = any(torch.equal(c, w[:, y:y + 8, x:x + 8]) for y in range(5) for x in range(5)
                    for c in (a[i], a[i].flip(-1), a[i].flip(-2), a[i].flip(-1).flip(-2)))
        assert found


def test_semi_supervised_dataset_pairs(prepared) -> None:
    bank = build_patch_bank(prepared, [0, 1], grid=8, patch_size=8, margin=1)
    labelled = bank.images([0])
    data = SemiSupervisedPatches(bank, labelled, seed=0)
    assert len(data) == 128
    item = data[70]
    j = int(data.order[70 % 64])
    assert torch.equal(item["unlabelled"], bank.window(70))
    assert torch.equal(item["labelled"], labelled.window(j))
    assert int(item["label"]) == int(labelled.labels[j])
    assert sorted(data.order.tolist()) == list(range(64))
    sup = LabelledPatches(labelled, length=150)
    assert len(sup) == 150 and torch.equal(sup[149]["image"], labelled.cell(149 % 64))
    joined = concat_banks([bank, bank.images([1])])
    assert joined.n_images == 3 and joined.labels is not None and len(joined) == 192


def test_field_of_view_fractions_and_the_unlabelled_filter(tmp_path: Path) -> None:
    """Each cell's FOV fraction comes from the cache's FOV mask; ``min_fov`` keeps the cells at
    least that much inside; the SSL-GAN's dataset then draws its unlabelled patches from them."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(20, 200, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    fov = np.zeros((64, 64), np.uint8)
    fov[:, :20] = 255                  # 8 px cells: columns 0 and 1 inside, column 2 half (16-19)
    fov[60:, 40:48] = 255              # rows 60-63 of cell (7, 5) (rows 56-63): half of it
    Image.fromarray(fov).save(tmp_path / "a_fov.png")
    manifest = Manifest.from_records([{"id": "a", "image": "a.png", "abnormal": 0,
                                       "mask_fov": "a_fov.png"}], root=tmp_path)
    config = PreprocessConfig(size=64, crop_fov=False, mask_outside_fov=False, normalize="max")
    prepared = Cache(tmp_path / "cache").prepare(manifest, config)
    bank = build_patch_bank(prepared, [0], grid=8, patch_size=8, margin=1)
    expected = np.zeros((8, 8))
    expected[:, :2], expected[:, 2], expected[7, 5] = 1.0, 0.5, 0.5
    np.testing.assert_allclose(bank.fov.reshape(8, 8), expected)
    half = in_field_of_view(bank, 0.5)
    assert half.tolist() == sorted([8 * r + c for r in range(8) for c in range(3)] + [61])
    assert len(in_field_of_view(bank, 0.6)) == 16 and len(in_field_of_view(bank, 0.0)) == 64
    data = SemiSupervisedPatches(bank, bank, seed=0, keep=half)
    assert len(data) == 25 and torch.equal(data[24]["unlabelled"], bank.window(61))
    assert np.array_equal(concat_banks([bank, bank.images([0])]).fov, np.tile(bank.fov, 2))
    with pytest.raises(ValueError, match="no unlabelled patch"):
        SemiSupervisedPatches(bank, bank, keep=in_field_of_view(bank, 1.0)[:0])


def test_patches_and_bags_mix_in_one_dataset_and_batch(prepared) -> None:
    bank = build_patch_bank(prepared, [0, 1], grid=8, patch_size=8)
    patches = LabelledPatches(bank.images([1]), length=70)
    data = PatchesAndBags(patches, bank, np.array([1, 0]))
    assert len(data) == 72
    assert torch.equal(data[69]["image"], bank.cell(64 + 69 % 64))            # a patch item
    bag = data[71]                                                           # the second image
    assert bag["bag"].shape == (64, 3, 8, 8) and int(bag["bag_label"]) == 0
    assert torch.equal(bag["bag"][10], bank.cell(64 + 10))
    batch = collate_patches_and_bags([data[3], data[70], data[5], data[71]])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["index"].tolist() == [3, 5]
    assert batch["bag_image"].shape == (2, 64, 3, 8, 8) and batch["bag_label"].tolist() == [1, 0]
    only_bags = collate_patches_and_bags([data[70]])
    assert only_bags["image"].shape == (0, 3, 8, 8) and only_bags["label"].shape == (0,)
    assert "bag_image" not in collate_patches_and_bags([data[0]])
    with pytest.raises(ValueError, match="1 bag labels for 2 bag images"):
        PatchesAndBags(patches, bank, np.array([1]))

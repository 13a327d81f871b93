"""Segmentation pretraining (``mask``: the union of lesion masks, method ``segmentation``): the pool
keeps only images with a mask, the target is the union of the masks inside the field of view, the
encoder (not the U-Net decoder) is saved and loads back, and wrong settings are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from retinassl.cli import app
from retinassl.config import load_config
from retinassl.data.cache import Cache
from retinassl.errors import ConfigError, DataError
from retinassl.jobs.pretrain import PretrainConfig, load_pool, pretrain_dataset, run_pretrain
from retinassl.io.rundir import RunDir
from retinassl.methods.base import seeded_method
from retinassl.models.checkpoint import load_encoder

LESIONS = ["mask_MA", "mask_HE", "mask_EX", "mask_SE"]
TINY = ["data.options.n_images=8", "data.options.size=64", "preprocess.size=32", "method.patch_size=32",
        "engine.batch_size=4", "engine.log_every_n_steps=1", "engine.precision='32'"]


def config(tmp_path: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain-segmentation", TINY + [
        f"data.options.out_dir={tmp_path / 'synthetic'}", f"runs_dir={tmp_path / 'runs'}", *extra])


def test_the_target_is_the_union_of_the_masks_inside_the_fov(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, "preprocess.crop_fov=false", "preprocess.size=64")  # the cache keeps the files' pixels
    pool = load_pool(cfg)
    prepared = Cache(cfg.data[0].cache_dir).prepare(pool, cfg.preprocess, mask_columns=cfg.mask)
    dataset = pretrain_dataset(prepared, cfg)
    root = Path(cfg.data[0].options["out_dir"])
    seen_lesion = False
    for row in range(len(dataset)):
        item = dataset[row]
        # independently: the union of the mask files as written, inside the dataset's FOV mask file
        union = np.zeros((64, 64), dtype=bool)
        for column in LESIONS:
            union |= np.asarray(Image.open(root / pool.frame.at[row, column])) > 0
        assert item["target"].shape == (1, 64, 64) and item["fov"].shape == (1, 64, 64)
        fov = item["fov"][0].numpy() > 0.5  # the cache's FOV: the dataset's FOV mask file, to a pixel
        assert (fov != (np.asarray(Image.open(root / pool.frame.at[row, "mask_fov"])) > 0)).mean() < 0.005
        np.testing.assert_array_equal(item["target"][0].numpy() > 0.5, union & fov)
        seen_lesion |= bool((union & fov).any())
    assert seen_lesion  # the check compared some lesion pixels, not only empty masks


def test_cropped_and_resized_targets_stay_on_their_lesions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the FOV crop and a smaller size (the studies' setting), the target is the masks carried
    through the image's geometry: inside the FOV, and where the lesions are (their pixels, resized with
    the same crop, overlap the target)."""
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, "preprocess.crop_fov=true", "preprocess.size=32")
    pool = load_pool(cfg)
    prepared = Cache(cfg.data[0].cache_dir).prepare(pool, cfg.preprocess, mask_columns=cfg.mask)
    dataset = pretrain_dataset(prepared, cfg)
    root = Path(cfg.data[0].options["out_dir"])
    checked = 0
    for row in range(len(dataset)):
        item = dataset[row]
        target, fov = item["target"][0].numpy() > 0.5, item["fov"][0].numpy() > 0.5
        assert not (target & ~fov).any()
        union = np.zeros((64, 64), dtype=bool)
        for column in LESIONS:
            union |= np.asarray(Image.open(root / pool.frame.at[row, column])) > 0
        ys, xs = np.nonzero(union)
        if len(ys):  # every lesion pixel, mapped by the recorded crop, padding and scale, lands on the target
            ox, oy = prepared.entries[row].geometry.to_output(xs + 0.5, ys + 0.5)
            ox, oy = np.clip(ox.astype(int), 0, 31), np.clip(oy.astype(int), 0, 31)
            inside = fov[oy, ox]
            assert inside.any() and target[oy[inside], ox[inside]].all()
            checked += 1
    assert checked >= 2


def test_pretraining_keeps_images_with_masks_and_saves_a_trained_encoder(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, "engine.max_steps=3")
    pool = load_pool(cfg)
    assert len(pool) == 8
    for column in LESIONS:  # two images without any lesion mask (a pool of several datasets)
        pool.frame.loc[pool.frame.index[:2], column] = ""
    encoder_dir = run_pretrain(cfg, RunDir.create(tmp_path / "runs", "lesions"), manifest=pool)
    encoder, meta = load_encoder(encoder_dir)
    assert meta["method"] == "segmentation" and meta["arch"] == "resnet18" and meta["pool_size"] == 6
    with safe_open(str(encoder_dir / "model.safetensors"), "pt") as saved:  # the encoder, not the U-Net
        assert saved.keys() and all(k.startswith("encoder.") for k in saved.keys())
    initial = seeded_method(cfg.model, cfg.method, "segmentation", cfg.seed)[0].encoder  # the run's start
    assert not torch.equal(encoder.conv1.weight, initial.conv1.weight)  # training moved it
    unchanged = seeded_method(cfg.model, cfg.method, "segmentation", cfg.seed)[0].encoder
    assert torch.equal(unchanged.conv1.weight, initial.conv1.weight)  # (the start is reproducible)


def test_cli_pretrain_segmentation_runs_on_the_packaged_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["pretrain", "segmentation", *TINY, "engine.max_steps=2",
                                      f"data.options.out_dir={tmp_path / 'synthetic'}",
                                      "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    assert load_encoder(run / "encoder")[1]["batches"] == 2


@pytest.mark.parametrize("extra, problem", [
    (["mask=null"], "needs the mask columns"),
    (["method.name=supervised"], "only it uses them"),
    (["label=abnormal"], "not a label"),
    (["mask=[mask_MA, mask_fov]"], r"\['mask_fov'\] cannot be learned"),
    (["mask=[mask_MA, mask_SEE]"], r"\['mask_SEE'\] cannot be learned"),
])
def test_wrong_settings_are_refused_naming_the_key(tmp_path: Path, extra: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=f"mask: .*{problem}"):
        config(tmp_path, *extra)


def test_a_pool_without_a_mask_column_is_refused_by_name(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    pool = load_pool(cfg)
    pool.frame = pool.frame.drop(columns=["mask_SE"])
    with pytest.raises(DataError, match=r"mask \['mask_SE'\]: no such column .*mask_MA"):
        run_pretrain(cfg, RunDir.create(tmp_path / "runs", "lesions"), manifest=pool)

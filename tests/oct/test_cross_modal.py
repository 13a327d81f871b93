"""Cross-modal pretraining: the masked loss, maps registered to the fundus/infrared input, quality
flags honoured, and a tiny end-to-end run (three stages: segmentation model -> maps from the OCT
volumes -> fundus-to-thickness regression) leaving a loadable encoder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from retinassl.models.checkpoint import load_encoder
from retinassl.config import validate
from retinassl.data.cache import Cache
from retinassl.data.field_of_view import Geometry
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.synthetic import generate_dataset
from retinassl.errors import DataError
from retinassl.oct.paired import ThicknessPairs, field_affine, input_manifest, warp_map
from retinassl.losses.regression import masked_regression_loss


def test_masked_loss_by_hand():
    pred = torch.tensor([1.0, 2.0, 5.0, 9.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 4.0, 2.0, 0.0]).view(1, 1, 2, 2)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 2)
    assert float(masked_regression_loss(pred, target, mask, "l1")) == pytest.approx((0 + 2 + 3) / 3)
    assert float(masked_regression_loss(pred, target, mask, "mse")) == pytest.approx((0 + 4 + 9) / 3)
    assert float(masked_regression_loss(pred, target, torch.zeros_like(mask))) == 0.0


def test_warp_map_onto_a_cropped_resized_image():
    # a map covering a 100x80 image; the image is cropped to x 10..90, y 0..80, padded to 80x80
    # and resized to 40: output pixel centres map back to the map exactly
    yy, xx = np.mgrid[0:20, 0:25].astype(np.float32)
    tmap = 200 + 4 * xx + 2 * yy                       # linear: bilinear resampling is exact
    tmap[0, 0] = 0                                     # one undefined pixel
    affine = field_affine(tmap.shape, (100, 80))
    geometry = Geometry(box=(10, 0, 90, 80), side=80, pad_x=0, pad_y=0, size=40, original_size=(100, 80))
    target, mask = warp_map(tmap, affine, geometry)
    o = np.arange(40)
    x = (o + 0.5) * 2 - 0.5 + 10                       # stored-image pixel of each output column
    col = (x + 0.5) / 4 - 0.5                          # map column (4 image pixels per map pixel)
    row = ((o + 0.5) * 2 - 0.5 + 0.5) / 4 - 0.5
    expect = 200 + 4 * col[None, :] + 2 * row[:, None]
    ok = mask > 0
    np.testing.assert_allclose(target[ok], expect[ok], atol=1e-3)
    assert ok.mean() > 0.9 and not ok[0, 0]            # the undefined corner is masked


@pytest.fixture(scope="module")
def paired_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    manifest = generate_dataset(root / "data", 8, size=96, with_oct=True, oct_shape=(9, 96, 64),
                                ir_size=64, seed=3)
    return root, manifest


def _prepared(root, manifest, column, size=48):
    pre = PreprocessConfig(size=size) if column == "image" else \
        PreprocessConfig(size=size, channels=1, crop_fov=False, mask_outside_fov=False)
    return Cache(root / "cache").prepare(input_manifest(manifest, column), pre, mask_columns=[])


@pytest.mark.parametrize("column", ["image", "ir_image"])
def test_targets_are_registered_to_the_input(paired_dataset, column):
    root, manifest = paired_dataset
    prepared = _prepared(root, manifest, column)
    pairs = ThicknessPairs(prepared, column)
    item = pairs[0]
    assert item["image"].shape[1:] == (48, 48) and item["target"].shape == (1, 48, 48)
    # the fovea of the input image is where the map's foveal value lands
    meta = json.loads(manifest.path(0, "oct_volume").with_suffix(".json").read_text())
    fx, fy = meta["fovea"]                                          # fundus pixels
    if column == "ir_image":
        aff = np.asarray(meta["ir_image"]["affine"])
        fx, fy = np.linalg.solve(aff[:, :2], np.array([fx, fy]) - aff[:, 2])
        geometry = prepared.entries[0].geometry
    else:
        geometry = prepared.entries[0].geometry
    s = geometry.scale
    ox = int(round((fx - geometry.box[0] + geometry.pad_x + 0.5) * s - 0.5))
    oy = int(round((fy - geometry.box[1] + geometry.pad_y + 0.5) * s - 0.5))
    tmap = np.load(manifest.path(0, "thickness_map"))
    centre = tmap[62:66, 62:66].mean()                              # the map is centred on the fovea
    assert item["mask"][0, oy, ox] == 1
    assert abs(float(item["target"][0, oy, ox]) - centre) < 30
    # the defined area is the scan: a square of ~5.9 mm around the fovea
    assert 0.05 < float(item["mask"].mean()) < (0.5 if column == "ir_image" else 0.35)


def test_bad_maps_are_masked_or_refused(paired_dataset, tmp_path):
    root, manifest = paired_dataset
    bad = manifest.path(1, "thickness_map")
    original = np.load(bad)
    try:
        broken = original.copy()
        broken[60:64, 60:64] = np.nan
        np.save(bad, broken)
        prepared = _prepared(root, manifest, "image")
        pairs = ThicknessPairs(prepared, "image")
        assert pairs.failed == [1] and float(pairs[1]["mask"].sum()) == 0
        assert float(pairs[0]["mask"].sum()) > 0
        with pytest.raises(DataError, match="fails the quality check") as err:
            ThicknessPairs(prepared, "image", on_bad_map="error")
        assert str(bad) in str(err.value)
    finally:
        np.save(bad, original)


@pytest.mark.slow
def test_three_stage_run_leaves_an_encoder(paired_dataset, tmp_path, tiny_layer_model):
    from retinassl.jobs.cross_modal import CrossModalRunConfig, run_cross_modal
    from retinassl.io.rundir import RunDir

    root, manifest = paired_dataset
    model_dir, _ = tiny_layer_model
    cfg = validate(CrossModalRunConfig, {
        "runs_dir": str(tmp_path), "input": "image", "maps": "segment", "layer_model": str(model_dir),
        "data": {"source": "manifest", "manifest": str(manifest.name), "cache_dir": str(root / "cache")},
        "preprocess": {"size": 48}, "model": {"arch": "unet", "kwargs": {"channels": [8, 16, 32]}},
        "engine": {"max_epochs": 2, "batch_size": 4, "precision": "32", "num_threads": 1,
                   "checkpoint_every_n_steps": -1}, "predictions": 1})
    run = RunDir.create(cfg.runs_dir, "cm")
    metrics = run_cross_modal(cfg, run)
    assert np.isfinite(metrics["mae_um"]) and np.isfinite(metrics["baseline_mae_um"])
    # deviant pixels are those where the mean map misses by > deviant_um (30), by definition
    assert metrics["pixels_deviant"] == 0 or metrics["baseline_mae_um_deviant"] > 30
    # the segmented maps agree with the generator's exact ones (within the tiny model's error)
    assert metrics["target_mae_um_vs_manifest"] < 25
    encoder, meta = load_encoder(run.encoder_dir)
    assert meta["method"] == "cross-modal" and meta["preprocess"]["size"] == 48
    import json

    trained_with = json.loads((run.path / "run.json").read_text())["precision"]
    assert meta["precision"] == trained_with == json.loads((run.path / "regressor" / "model.json").read_text())["precision"]
    assert encoder(torch.zeros(1, 3, 48, 48)).shape == (1, 32)
    assert list(run.report_dir.glob("figures/crossmodal-*.png"))
    # the whole regressor is saved: `predict` writes each photograph's thickness map in micrometres,
    # the same as the trained method's own prediction
    from retinassl.data.manifest import Manifest
    from retinassl.jobs.cross_modal import predict_maps
    from retinassl.jobs.predict import predict
    from retinassl.methods.cross_modal import load_regressor

    images = Manifest.load(manifest.name)
    images = images.subset(np.arange(len(images)) < 2)
    out = predict(run.path / "regressor", images, tmp_path / "maps", cache_dir=root / "cache")
    table = pd.read_csv(out)
    regressor = load_regressor(run.path / "regressor")
    prepared = _prepared(root, images, "image")
    expected = predict_maps(regressor, ThicknessPairs(prepared, "image", "mask"), np.arange(2))
    for k, ident in enumerate(table["id"]):
        got = np.load(tmp_path / "maps" / f"{ident}-thickness.npy")
        np.testing.assert_allclose(got, expected[k], atol=1e-3)
        assert (tmp_path / "maps" / f"{ident}-thickness.png").is_file()
    assert table["mean_um"].between(50, 800).all()

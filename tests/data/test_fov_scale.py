"""Scale travels with the model (issue 22, item 3): a saved model records the field-of-view diameter
of its training images at its input size, and predict / evaluate rescale new images to match it.

The images are synthetic: a disc with a smooth dark pattern ("A", FOV 56 px of 64) and the same disc
shrunk to half ("B", FOV 28 px of 64). At the model's size B's FOV spans half the pixels; matched, it
is prepared at twice the size, and a (seeded, untrained) U-Net's probabilities on it equal those on A
within a tolerance, while without matching they do not. The U-Net reads [0, 1] intensities
(``input.normalize: unit``): the default per-image standardisation inside the FOV weighs the
blurred rim of a 28-px disc, which would shift B's statistics whatever its scale."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from retinassl.config import load_config
from retinassl.data.cache import Cache
from retinassl.data.fov_scale import (FOV_KEY, fov_diameter, fov_record, matched_size,
                                      median_fov_diameter, prepare_at_model_scale)
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
from retinassl.io.saved_model import read_model_meta

CANVAS, DISC = 64, 56


def eye(disc: int) -> np.ndarray:
    """A ``CANVAS`` square RGB photograph: a disc of diameter ``disc`` (the full-size pattern
    shrunk by ``disc / DISC`` with area averaging) centred on black."""
    yy, xx = np.mgrid[:DISC, :DISC].astype(np.float32)
    inside = (yy - (DISC - 1) / 2) ** 2 + (xx - (DISC - 1) / 2) ** 2 <= (DISC / 2) ** 2
    green = 150 + 60 * np.sin(2 * np.pi * (xx + 0.5 * yy) / 56) * np.cos(2 * np.pi * yy / 66)
    full = np.stack([green * 1.2, green, green * 0.5], axis=-1).clip(0, 255) * inside[..., None]
    small = full if disc == DISC else cv2.resize(full, (disc, disc), interpolation=cv2.INTER_AREA)
    out = np.zeros((CANVAS, CANVAS, 3), dtype=np.float32)
    start = (CANVAS - disc) // 2
    out[start:start + disc, start:start + disc] = small
    return out.round().astype(np.uint8)


def write_eyes(root: Path) -> Manifest:
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(eye(DISC)).save(root / "a.png")
    Image.fromarray(eye(DISC // 2)).save(root / "b.png")
    return Manifest.from_records([{"id": "a", "image": "a.png"}, {"id": "b", "image": "b.png"}], root, name="eyes")


def test_fov_diameter_of_discs_and_cut_discs() -> None:
    yy, xx = np.mgrid[:80, :100]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 30 ** 2
    assert fov_diameter(disc) == 61.0                     # 2 * 30 + 1 pixels across
    cut = disc & (yy >= 25) & (yy < 55)                    # cut at top and bottom: keeps its width
    assert fov_diameter(cut) == 61.0
    assert fov_diameter(np.zeros((5, 5), bool)) == 0.0
    assert matched_size(64, 56.0, 28.0) == 128 and matched_size(584, 540, 540 * 1.25) == 467


def test_half_size_fov_is_rescaled_to_match(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = write_eyes(tmp_path / "eyes")
    config = PreprocessConfig(size=CANVAS, crop_fov=False)
    cache = Cache(tmp_path / "cache")
    trained = cache.prepare(manifest.subset(np.array([0])), config)
    recorded = fov_record(trained)[FOV_KEY]
    fov = np.asarray(trained.entries[0].fov())
    ys, xs = np.nonzero(fov)                               # independent: the extent of the FOV pixels
    assert recorded == max(np.ptp(ys), np.ptp(xs)) + 1 and abs(recorded - DISC) <= 2
    half = manifest.subset(np.array([1]))
    with caplog.at_level(logging.INFO, logger="retinassl.data.fov_scale"):
        matched = prepare_at_model_scale(lambda c: cache.prepare(half, c), config, recorded)
    assert matched.config.size == matched_size(CANVAS, recorded, median_fov_diameter(cache.prepare(half, config)))
    assert abs(matched.config.size - 2 * CANVAS) <= 6
    assert abs(median_fov_diameter(matched) - recorded) <= 3
    assert "rescaled to size" in caplog.text
    # matching images are left alone, and matching can be turned off
    same = prepare_at_model_scale(lambda c: cache.prepare(manifest.subset(np.array([0])), c), config, recorded)
    assert same.config.size == CANVAS
    off = prepare_at_model_scale(lambda c: cache.prepare(half, c), config, recorded, enabled=False)
    assert off.config.size == CANVAS
    unknown = prepare_at_model_scale(lambda c: cache.prepare(half, c), config, None)
    assert unknown.config.size == CANVAS


def saved_segmenter(tmp_path: Path, recorded: float) -> Path:
    from retinassl.jobs.segment import build_vessel_method, save_segmenter
    from retinassl.jobs.segment_config import SegmentConfig

    cfg = load_config(SegmentConfig, None, [
        "data.source=synthetic", f"preprocess={{size: {CANVAS}, crop_fov: false}}", "model.arch=unet",
        "model.kwargs={channels: [4, 8]}", "method={name: segmentation, patch_size: 16}",
        "input={channels: green, clahe: false, normalize: unit}", "inference.roi_size=32"])
    vessel, info = build_vessel_method(cfg, 1)
    last = [m for m in vessel.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # untrained logits of [0, 1] inputs are nearly constant: spread them out
        last.weight.mul_(10000 / float(last.weight.abs().sum()))
        last.bias.zero_()
    return save_segmenter(tmp_path / "segmenter", vessel.eval(), info, cfg, {FOV_KEY: recorded})


def probabilities(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255


def test_predictions_on_the_half_size_image_match_the_full_size_ones(tmp_path: Path) -> None:
    from retinassl.jobs.predict import predict

    manifest = write_eyes(tmp_path / "eyes")
    cache = Cache(tmp_path / "cache")
    recorded = fov_record(cache.prepare(manifest.subset(np.array([0])), PreprocessConfig(size=CANVAS, crop_fov=False)))
    model = saved_segmenter(tmp_path, recorded[FOV_KEY])
    assert read_model_meta(model)[FOV_KEY] == recorded[FOV_KEY]
    for row in (0, 1):  # one camera per call: a dataset is prepared at the size matching its median
        one = manifest.subset(np.array([row]))
        predict(model, one, tmp_path / f"matched{row}", cache_dir=tmp_path / "cache")
        predict(model, one, tmp_path / f"plain{row}", cache_dir=tmp_path / "cache", match_scale=False)
    full = probabilities(tmp_path / "matched0" / "a-prob.png")
    assert np.array_equal(full, probabilities(tmp_path / "plain0" / "a-prob.png"))   # A is at the model's scale
    start, half = (CANVAS - DISC // 2) // 2, DISC // 2
    reference = cv2.resize(full[4:4 + DISC, 4:4 + DISC], (half, half), interpolation=cv2.INTER_AREA)
    ring = np.zeros((half, half), bool)                  # compare inside the disc, away from its rim
    yy, xx = np.mgrid[:half, :half]
    ring[(yy - (half - 1) / 2) ** 2 + (xx - (half - 1) / 2) ** 2 <= (half / 2 - 3) ** 2] = True

    def error(folder: str) -> float:
        b = probabilities(tmp_path / f"{folder}1" / "b-prob.png")[start:start + half, start:start + half]
        return float(np.abs(b - reference)[ring].mean())

    spread = float(np.abs(reference - reference[ring].mean())[ring].mean())   # how much the map varies
    assert error("matched") < 0.2 * spread, (error("matched"), spread)        # measured: 0.13
    assert error("plain") > 5 * error("matched"), (error("plain"), error("matched"))   # measured: 11x

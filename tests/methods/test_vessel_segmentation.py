"""The vessel-segmentation method: FOV patch sampling, losses, encoder freezing, exact resume, and a
smoke training + evaluation + prediction on synthetic vessels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retinassl.config import load_config
from retinassl.engine.fit import fit
from retinassl.methods.vessel_segmentation import VesselSegmentation, fov_masked_logits
from retinassl.data.vessel_inputs import (InputConfig, VesselImageDataset, VesselImages,
                                                  network_input, sample_patches)
from retinassl.methods.base import build_method
from retinassl.models import build_encoder
from retinassl.io.rundir import RunDir

SIZE = 48


def tiny_images(n: int = 2, seed: int = 0) -> VesselImages:
    """Discs of FOV with dark diagonal 'vessels' (exact masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    fov = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 2 - 2) ** 2
    images, vessels = [], []
    for _ in range(n):
        offset = int(rng.integers(-10, 10))
        vessel = (np.abs(yy - xx - offset) <= 1) & fov
        rgb = np.full((SIZE, SIZE, 3), 150, dtype=np.uint8)
        rgb[vessel] = 60
        rgb = (rgb + rng.integers(0, 20, rgb.shape)).astype(np.uint8) * fov[..., None]
        images.append(network_input(rgb, fov, InputConfig()))
        vessels.append(vessel)
    return VesselImages([f"i{k}" for k in range(n)], list(range(n)), images, vessels, [fov] * n)


def make_method(**params) -> VesselSegmentation:
    torch.manual_seed(0)
    encoder = build_encoder("unet", in_channels=1, channels=(4, 8, 16))
    return build_method("segmentation", {"patch_size": 16, "patches_per_image": 3, **params}, encoder)


def batch_of(images: VesselImages) -> dict:
    data = VesselImageDataset(images)
    items = [data[i] for i in range(len(data))]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def test_network_input_normalisations() -> None:
    from retinassl.data.preprocess import normalize

    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (12, 10, 3)).astype(np.uint8)
    fov = np.ones((12, 10), dtype=bool)
    fov[:3] = False
    green = network_input(image, fov, InputConfig(clahe=False))
    assert green.shape == (1, 12, 10) and (green[:, ~fov] == 0).all()
    assert green[0, fov].mean() == pytest.approx(0, abs=1e-5) and green[0, fov].std() == pytest.approx(1, abs=1e-4)
    rgb_max = network_input(image, fov, InputConfig(channels="rgb", clahe=False, normalize="max"))
    expected = normalize(image, "max") * fov  # the pretraining presets' normalisation, FOV-masked
    assert np.allclose(rgb_max, expected, atol=1e-6)


def test_patches_are_centred_in_the_fov_and_seeded() -> None:
    batch = batch_of(tiny_images())
    fov = batch["fov"].clone()
    fov[:, :, :, SIZE // 2:] = 0  # only the left half may hold centres
    g = torch.Generator().manual_seed(5)
    x, y, inside = sample_patches(batch["image"], batch["target"], fov, 9, 50, g, "none")
    assert x.shape == (100, 1, 9, 9) and y.shape == inside.shape == (100, 1, 9, 9)
    assert (inside[:, 0, 4, 4] == 1).all()  # every centre pixel is inside the (restricted) FOV
    again = sample_patches(batch["image"], batch["target"], fov, 9, 50, torch.Generator().manual_seed(5), "none")
    assert torch.equal(x, again[0])
    for mode in ("dihedral", "affine"):
        x2, y2, in2 = sample_patches(batch["image"], batch["target"], batch["fov"], 16, 4,
                                     torch.Generator().manual_seed(1), mode)
        assert x2.shape == (8, 1, 16, 16) and 0 <= float(y2.min()) and float(y2.max()) <= 1
        assert (y2 <= in2).all()  # no vessel target outside the FOV


@pytest.mark.parametrize("loss", ["dice", "dice_ce", "cldice"])
def test_loss_is_finite_seeded_and_reaches_every_parameter(loss: str) -> None:
    method = make_method(loss=loss)
    batch = batch_of(tiny_images())
    values = []
    for _ in range(2):
        method.zero_grad(set_to_none=True)
        value, _ = method.loss(batch, "main", torch.Generator().manual_seed(3))
        value.backward()
        values.append(float(value))
    assert np.isfinite(values[0]) and values[0] == values[1]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())
    other, _ = method.loss(batch, "main", torch.Generator().manual_seed(4))
    assert float(other) != values[0]


def test_logits_outside_fov_give_no_gradient() -> None:
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    fov = torch.zeros(1, 1, 4, 4)
    fov[..., :2] = 1
    fov_masked_logits(logits, fov).sum().backward()
    assert (logits.grad[..., 2:] == 0).all() and (logits.grad[..., :2] == 1).all()


def test_encoder_frozen_for_the_first_steps() -> None:
    method = make_method(freeze_encoder_steps=2)
    method.train()
    batch = batch_of(tiny_images())
    for step in range(3):
        method.zero_grad(set_to_none=True)
        value, _ = method.loss(batch, "main", torch.Generator().manual_seed(step))
        value.backward()
        got = [p.grad is not None for p in method.encoder.parameters()]
        assert all(got) if step >= 2 else not any(got)
        assert method.encoder.training == (step >= 2)
        method.after_step()
    assert int(method.steps_done) == 3 and "steps_done" in method.state_dict()


def _fit(run: Path, max_steps: int, resume: bool = False) -> dict[str, torch.Tensor]:
    from retinassl.config import EngineConfig

    method = make_method(freeze_encoder_steps=1, schedule="constant")  # lr independent of max_steps
    engine = EngineConfig(max_epochs=2, batch_size=2, precision="32", checkpoint_every_n_steps=1,
                          max_steps=max_steps)
    fit(method, VesselImageDataset(tiny_images(3), 4), config=engine, run=RunDir(run), seed=7,
        resume=resume)
    return method.state_dict()


def test_resume_is_exact(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "a", 4)
    _fit(tmp_path / "b", 3)
    resumed = _fit(tmp_path / "b", 4, resume=True)
    assert int(resumed["steps_done"]) == 4
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_smoke_training_on_synthetic_vessels(tmp_path: Path) -> None:
    from retinassl.jobs.segment import load_segmenter, predict_images, run_segment_train
    from retinassl.jobs.segment_config import SegmentConfig
    from retinassl.io.results import read_results

    cfg = load_config(SegmentConfig, None, [
        "data.source=synthetic", f"data.options={{n_images: 10, size: 64, seed: 3, out_dir: {tmp_path / 'syn'}}}",
        f"data.cache_dir={tmp_path / 'cache'}", "preprocess.size=64", "model.kwargs={channels: [4, 8]}",
        "method={name: segmentation, patch_size: 32, patches_per_image: 2}", "engine.max_epochs=2",
        "engine.batch_size=2", "train.samples_per_epoch=4", "inference.roi_size=32", "figures=1",
        "bootstrap=20", f"runs_dir={tmp_path / 'runs'}"])
    run = RunDir.create(cfg.runs_dir, cfg.name)
    metrics = run_segment_train(cfg, run)
    assert 0 <= metrics["synthetic_accuracy"] <= 1 and metrics["train_steps"] == 4
    results = read_results(run.results_file)
    assert {"dice", "dice_ci_low", "auc", "sensitivity", "specificity"} <= set(results["metric"])
    assert set(results["task"]) == {"vessels:synthetic"}
    figures = list((run.report_dir / "figures").glob("vessels-synthetic-*.png"))
    assert len(figures) == 1
    probs = sorted((run.predictions / "synthetic").glob("*-prob.png"))
    assert probs and len(probs) == len(list((run.predictions / "synthetic").glob("*-vessels.png")))
    segmenter = load_segmenter(run.path)
    import json

    trained_with = json.loads((run.path / "run.json").read_text())["precision"]  # bf16 and float32 differ
    assert json.loads((run.path / "segmenter" / "model.json").read_text())["precision"] == trained_with
    assert json.loads((run.encoder_dir / "model.json").read_text())["precision"] == trained_with
    from retinassl.jobs.segment import run_segment_evaluate
    from retinassl.jobs.segment_config import EvalDatasetConfig

    other = RunDir.create(tmp_path / "runs", "evaluate")  # cross-dataset path: another scale
    spec = EvalDatasetConfig(name="other", data=cfg.data, split="test",
                             preprocess=segmenter.preprocess.model_copy(update={"size": 48}))
    result = run_segment_evaluate(segmenter, spec, other, n_figures=0, n_boot=10)
    assert len(result.table) == len(probs) and set(read_results(other.results_file)["task"]) == {"vessels:other"}
    from retinassl.data.cache import Cache
    from retinassl.data.manifest import Manifest

    manifest = Manifest.load(run.path / "manifest.csv").subset(np.array([0]))
    prepared = Cache(tmp_path / "cache").prepare(manifest, segmenter.preprocess)
    written = predict_images(segmenter, prepared, tmp_path / "out")
    assert [p.name for p in written] == [f"{manifest.ids[0]}-prob.png", f"{manifest.ids[0]}-vessels.png"]
    # the saved model records its training images' FOV diameter at its input size (predict matches it)
    everything = Manifest.load(run.path / "manifest.csv")
    cached = Cache(tmp_path / "cache").prepare(everything, segmenter.preprocess)
    ids = everything.frame["id"].astype(str).tolist()
    extents = [max(np.ptp(ys), np.ptp(xs)) + 1 for ys, xs in
               (np.nonzero(np.asarray(cached.entries[ids.index(i)].fov())) for i in segmenter.meta["train_ids"])]
    assert segmenter.meta["fov_diameter"] == round(float(np.median(extents)), 2)

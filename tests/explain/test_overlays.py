"""What a model looked at, on new images: `retinassl predict --explain` writes one overlay per image
(Grad-CAM of a classifier, patch heatmap of a patch classifier) mapped back onto the original image
(its size; a planted bright square and a hot patch land where the crop/pad/resize arithmetic says),
scoring each image once, named by image id; `evaluate external` draws the reliability diagram and the gallery of the
truly worst misses (picks checked against a reference computed here from the written predictions),
and the report shows them without source folder names."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retinassl.data.manifest import Manifest
from retinassl.data.patches import patch_values_to_image
from retinassl.explain.gradcam import classifier_cam_model, explanation_maps
from retinassl.explain.overlays import image_overlays, misses_gallery, original_overlay, worst_misses
from retinassl.figures.heatmap import blend
from retinassl.jobs.segment_inference import to_original
from retinassl.io.rundir import RunDir
from retinassl.jobs.external import evaluate_external
from retinassl.jobs.predict import ImageScorer, input_manifest, model_preprocess, predict, prepare_for
from retinassl.metrics.classification import expected_calibration_error, reliability_bins
from retinassl.report.html import build_report

SIZE = 64
PRIVATE = "Doe_Jane_1970"            # a patient-named folder: must reach no output name or report


def _photos(folder: Path, n: int = 14, seed: int = 0) -> None:
    """Fundus-like discs with a few seeded bright spots."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for k in range(n):
        photo = np.zeros((SIZE, SIZE, 3), np.uint8)
        photo[(yy - 32) ** 2 + (xx - 32) ** 2 < 29 ** 2] = (40, 70, 150)
        for _ in range(int(rng.integers(0, 6))):
            cy, cx = rng.integers(16, 48, size=2)
            photo[(yy - cy) ** 2 + (xx - cx) ** 2 < 9] = (220, 230, 250)
        photo = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{k:02d}.png"), photo)


def _classifier(directory: Path, threshold: float | None) -> Path:
    from retinassl.jobs.finetune import save_classifier
    from retinassl.methods.base import build_method
    from retinassl.metrics.tasks import TaskSpec
    from retinassl.models import build_encoder

    torch.manual_seed(0)
    method = build_method("supervised", {"task": "binary"}, build_encoder("convnet", width=4)).eval()
    with torch.no_grad():   # a logit that grows with every feature: its Grad-CAM is not all zero
        method.head.fc.weight.abs_()
    extra = {} if threshold is None else {"operating_point": {"threshold": threshold}}
    return save_classifier(directory, method, arch="convnet", kwargs={"width": 4}, preprocess={"size": SIZE},
                           task=TaskSpec(name="abnormal", kind="binary", label="abnormal"), extra=extra)


def _patch_classifier(directory: Path) -> Path:
    from retinassl.models import build_encoder
    from retinassl.models.patch_classifier import PatchClassifier

    torch.manual_seed(1)
    encoder = build_encoder("convnet", width=4)
    classifier = PatchClassifier(encoder, torch.nn.Linear(encoder.num_features, 1), "unit", 32, 2)
    return classifier.save(directory, arch="convnet", kwargs={"width": 4}, method="supervised",
                           preprocess={"size": SIZE})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Images in a patient-named folder, seeded labels, and a classifier whose saved threshold is the
    median of its own scores (so both kinds of miss exist)."""
    tmp = tmp_path_factory.mktemp("overlays")
    images = tmp / PRIVATE
    _photos(images)
    manifest = input_manifest([str(images)])
    frame = manifest.frame.copy()
    frame["abnormal"] = np.random.default_rng(3).permutation([0, 1] * 7)
    labelled = Manifest(frame, manifest.root, "labelled")
    plain = _classifier(tmp / "plain", None)
    scorer = ImageScorer.load(plain)
    prepared = prepare_for(labelled, model_preprocess(scorer.meta), tmp / "cache", False)
    scores, _ = scorer.score(prepared, np.arange(len(prepared)))
    return {"tmp": tmp, "images": images, "manifest": labelled, "cache": tmp / "cache",
            "classifier": _classifier(tmp / "classifier", float(np.median(scores))),
            "patch": _patch_classifier(tmp / "patch")}


def test_reliability_bins_by_hand() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    probs = np.array([0.05, 0.15, 0.55, 0.95, 1.0])
    mean, rate, count = reliability_bins(labels, probs, bins=4)   # [0, .25) [.25, .5) [.5, .75) [.75, 1]
    np.testing.assert_allclose(count, [2, 0, 1, 2])
    np.testing.assert_allclose(mean[[0, 2, 3]], [0.1, 0.55, 0.975])
    np.testing.assert_allclose(rate[[0, 2, 3]], [0.5, 0.0, 1.0])
    assert np.isnan(mean[1]) and np.isnan(rate[1])
    ece = expected_calibration_error(labels, probs, bins=4)
    assert ece == pytest.approx((2 * 0.4 + 1 * 0.55 + 2 * 0.025) / 5)


def _reference_misses(labels: list[int], scores: list[float], threshold: float | None, n: int):
    fp = [i for i in range(len(labels)) if labels[i] == 0 and (threshold is None or scores[i] >= threshold)]
    fn = [i for i in range(len(labels)) if labels[i] == 1 and (threshold is None or scores[i] < threshold)]
    fp = sorted(fp, key=lambda i: (-scores[i], i))[:n]
    fn = sorted(fn, key=lambda i: (scores[i], i))[:n]
    return fp, fn


def test_worst_misses_against_a_plain_reference() -> None:
    rng = np.random.default_rng(7)
    for trial in range(20):
        n = int(rng.integers(1, 30))
        labels = rng.integers(0, 2, n)
        scores = np.round(rng.random(n), 1)                           # ties on purpose
        threshold = None if trial % 4 == 0 else float(rng.random())
        fp, fn = worst_misses(labels, scores, threshold, 3)
        ref_fp, ref_fn = _reference_misses(labels.tolist(), scores.tolist(), threshold, 3)
        assert fp.tolist() == ref_fp and fn.tolist() == ref_fn


def test_predict_explain_writes_one_overlay_per_image(world: dict, tmp_path: Path) -> None:
    for kind in ("classifier", "patch"):
        out = tmp_path / kind
        path = predict(world[kind], world["manifest"], out, cache_dir=world["cache"], overlays=image_overlays)
        table = pd.read_csv(path)
        assert len(table) == 14 and table["overlay_png"].notna().all()
        assert sorted((out / "overlays").iterdir()) == sorted(out / p for p in table["overlay_png"])
        assert all(p == f"overlays/{i}.png" for i, p in zip(table["id"], table["overlay_png"]))
        assert not any(PRIVATE in str(p) for p in out.rglob("*")) and PRIVATE not in path.read_text()
        scorer = ImageScorer.load(world[kind])
        prepared = prepare_for(world["manifest"], model_preprocess(scorer.meta), world["cache"], False)
        for row in (0, 5):
            art = np.asarray(Image.open(out / table.at[row, "overlay_png"]))
            original = np.asarray(Image.open(world["images"] / f"img{row:02d}.png").convert("RGB"))
            assert art.shape == original.shape == (SIZE, SIZE, 3)      # the original image's size
            assert np.abs(art.astype(int) - original).mean() > 1       # something is drawn on it
            geometry = prepared.entries[row].geometry
            if kind == "classifier":                                   # this image's Grad-CAM, mapped back
                heat = explanation_maps(classifier_cam_model(world[kind])[0], prepared, [row])[0][0]
                np.testing.assert_array_equal(art, blend(original, to_original(heat, geometry), 0.5))
            if kind == "patch":                                        # the heatmap of the CSV's patch scores
                probs = table.loc[row, ["patch_00", "patch_01", "patch_02", "patch_03"]].to_numpy(float)
                heat = patch_values_to_image(probs.reshape(2, 2), SIZE, SIZE, sigma=0.03 * SIZE)
                np.testing.assert_allclose(art, blend(original, to_original(heat, geometry), 0.45), atol=1)
            x0, y0, x1, y1 = geometry.box                              # no heat outside the cropped FOV
            outside = np.ones(original.shape[:2], bool)
            outside[y0:y1, x0:x1] = False
            np.testing.assert_array_equal(art[outside], original[outside])


def test_a_patch_classifier_is_scored_once_per_image(world: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from retinassl.models.patch_classifier import PatchClassifier

    cells: list[int] = []
    forward = PatchClassifier.forward

    def counting(self, x):
        cells.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(PatchClassifier, "forward", counting)
    path = predict(world["patch"], world["manifest"], tmp_path / "once", cache_dir=world["cache"],
                   overlays=image_overlays)
    assert sum(cells) == 14 * 2 * 2                                   # every image's 2x2 patches, once
    assert pd.read_csv(path)["overlay_png"].notna().all()
    cells.clear()                                                     # the gallery reuses them too
    run = RunDir.create(tmp_path / "runs", "once")
    evaluate_external([world["patch"]], world["manifest"], "abnormal", run, name="syn", cache_dir=world["cache"],
                      n_boot=5, gallery=misses_gallery, misses=2)
    assert sum(cells) == 14 * 2 * 2


def _disc_photo(path: Path, square: tuple[int, int, int] | None = None) -> np.ndarray:
    """A 100x50 photograph with a disc of radius 34 centred at (45, 25), cut by the top and bottom
    edges (so the square crop is padded), and optionally a white ``(x, y, side)`` square."""
    yy, xx = np.mgrid[:50, :100]
    photo = np.zeros((50, 100, 3), np.uint8)
    photo[(yy - 25) ** 2 + (xx - 45) ** 2 < 34 ** 2] = (40, 70, 150)
    if square is not None:
        x, y, side = square
        photo[y:y + side, x:x + side] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), photo[..., ::-1])
    return photo


# the disc's crop, worked out by hand: x 12..78 (67 px), y 0..49 (50 px) -> a 67 px square with the
# crop 8 px down (pad (67 - 50) // 2), resized to 32 px: model pixel (u, v) <- original (x, y) =
# (12 + u * 67 / 32, v * 67 / 32 - 8)
BOX, SIDE, PAD_Y, MODEL = (12, 0, 79, 50), 67, 8, 32


def _hot_box(art: np.ndarray, original: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` of the pixels coloured at least half as much as the most."""
    diff = np.abs(art.astype(int) - original.astype(int)).sum(axis=2)
    ys, xs = np.nonzero(diff >= diff.max() / 2)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_a_planted_bright_square_maps_back_onto_itself(tmp_path: Path) -> None:
    from retinassl.data.preprocess import PreprocessConfig

    original = _disc_photo(tmp_path / "photos" / "eye.png", square=(50, 30, 10))
    prepared = prepare_for(input_manifest([str(tmp_path / "photos")]), PreprocessConfig(size=MODEL),
                           tmp_path / "cache", False)
    geometry = prepared.entries[0].geometry
    assert geometry.original_size == (100, 50) and geometry.side == SIDE and geometry.pad_y == PAD_Y
    assert np.abs(np.subtract(geometry.box, BOX)).max() <= 1
    seen = np.asarray(prepared.entries[0].image())
    heat = (seen.max(axis=2) > 200).astype(np.float32)       # the square, as the model saw it
    art = original_overlay(prepared, 0, heat, 0.45)
    assert art.shape == original.shape
    np.testing.assert_allclose(_hot_box(art, original), (50, 30, 60, 40), atol=2)


def test_a_hot_patch_lands_where_the_crop_arithmetic_says(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from retinassl.data.preprocess import PreprocessConfig

    original = _disc_photo(tmp_path / "photos" / "eye.png")
    prepared = prepare_for(input_manifest([str(tmp_path / "photos")]), PreprocessConfig(size=MODEL),
                           tmp_path / "cache", False)
    probs = np.zeros((4, 4))
    probs[1, 2] = 1.0                                         # row 1, column 2 of a 4x4 grid: 8 px cells
    scored = pd.DataFrame(probs.reshape(1, 16), columns=[f"patch_{j:02d}" for j in range(16)])
    scorer = ImageScorer("patch-classifier", {}, SimpleNamespace(grid=4))
    art = image_overlays(scorer, prepared, [0], scored)[0]
    assert art.shape == original.shape
    f = SIDE / MODEL
    expected = (BOX[0] + 16 * f, 8 * f - PAD_Y, BOX[0] + 24 * f, 16 * f - PAD_Y)   # (45.5, 8.75, 62.25, 25.5)
    np.testing.assert_allclose(_hot_box(art, original), expected, atol=2.5)


def test_external_report_has_reliability_roc_and_the_truly_worst_misses(world: dict, tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "external")
    evaluate_external([world["classifier"], world["patch"]], world["manifest"], "abnormal", run, name="syn",
                      cache_dir=world["cache"], n_boot=20, gallery=misses_gallery, misses=3)
    figures = run.report_dir / "figures"
    assert (figures / "reliability-syn.png").is_file()
    threshold = json.loads((world["classifier"] / "model.json").read_text())["operating_point"]["threshold"]
    for model, cut in (("classifier", threshold), ("patch", None)):
        written = pd.read_csv(run.predictions / f"external-syn-{model}.csv")
        ref_fp, ref_fn = _reference_misses(written["label"].tolist(), written["score"].tolist(), cut, 3)
        picks = pd.read_csv(figures / f"misses-syn-{model}.csv")
        ids = written["id"].astype(str).tolist()
        kinds = ("false_positive", "false_negative") if cut is not None else ("highest_negative", "lowest_positive")
        assert picks.loc[picks["miss"] == kinds[0], "id"].astype(str).tolist() == [ids[i] for i in ref_fp]
        assert picks.loc[picks["miss"] == kinds[1], "id"].astype(str).tolist() == [ids[i] for i in ref_fn]
        assert len(ref_fp) > 0 and len(ref_fn) > 0
        assert (figures / f"misses-syn-{model}.png").is_file()
    report = build_report(run).read_text()
    for figure in ("roc.png", "reliability-syn.png", "misses-syn-classifier.png", "misses-syn-patch.png"):
        assert f"figures/{figure}" in report
    assert PRIVATE not in report
    assert not any(PRIVATE in str(p) for p in run.path.rglob("*"))
    assert not any(PRIVATE in p.read_text() for p in figures.glob("*.csv"))


@pytest.mark.slow
def test_the_commands_wire_explain_and_misses(world: dict, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "RETINASSL_CACHE": str(world["cache"])}

    def retinassl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from retinassl.cli import main; main()", *args],
                              capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)

    done = retinassl("predict", str(world["classifier"]), str(world["images"]), "--out", "cam", "--explain")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "cam" / "overlays").glob("*.png"))) == 14
    world["manifest"].save(tmp_path / "labelled.csv")
    done = retinassl("evaluate", "external", str(world["classifier"]), "--source", "csv", "-o",
                     f"csv={tmp_path / 'labelled.csv'}", "-o", f"root={world['images']}", "--label", "abnormal",
                     "--name", "syn", "--misses", "2", "--runs-dir", "runs")
    assert done.returncode == 0, done.stderr[-2000:]
    run = next((tmp_path / "runs").iterdir())
    picks = pd.read_csv(run / "report" / "figures" / "misses-syn-classifier.csv")
    assert picks.groupby("miss").size().max() == 2
    assert "reliability-syn.png" in (run / "report" / "index.html").read_text()

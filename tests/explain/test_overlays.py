"""What a model looked at, on new images: `retinassl predict --explain` writes one overlay per image
(Grad-CAM of a classifier, patch heatmap of a patch classifier) at the shape of the image the model
saw, named by image id, each image scored once; `evaluate external` draws the reliability diagram and the gallery of the
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
from retinassl.explain.gradcam import classifier_cam_model, gradcam_overlays
from retinassl.explain.overlays import image_overlays, misses_gallery, worst_misses
from retinassl.figures.heatmap import overlay
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
            seen = np.asarray(prepared.entries[row].image())
            assert art.shape == seen.shape == (SIZE, SIZE, 3)
            assert np.abs(art.astype(int) - seen).mean() > 1           # something is drawn on it
            if kind == "classifier":                                   # this image's Grad-CAM
                reference = gradcam_overlays(classifier_cam_model(world[kind])[0], prepared, [row])[0][0]
                np.testing.assert_array_equal(art, reference)
            if kind == "patch":                                        # the heatmap of the CSV's patch scores
                probs = table.loc[row, ["patch_00", "patch_01", "patch_02", "patch_03"]].to_numpy(float)
                np.testing.assert_allclose(art, overlay(seen, probs.reshape(2, 2)), atol=1)


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

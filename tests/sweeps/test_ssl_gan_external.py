"""`evaluate_on` in the SSL-GAN sweep (issue 17 item 5): every cell's patch classifier also scores a
synthetic external set; its AUC is sklearn's of the saved predictions, its labels the mapping's,
its scores the sum of the patch sigmoids and what `retinassl predict` gives with the kept
classifier; the paired DeLong test runs on the external set; a resumed sweep redoes nothing, and
a sweep resumed with `evaluate_on` added scores the done cells without training them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import retinassl.sweeps.ssl_gan as experiment
import retinassl.sweeps.ssl_gan_external as external_module
from retinassl.config import apply_overrides, read_yaml
from retinassl.data.manifest import Manifest
from retinassl.errors import ConfigError
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.jobs.predict import predict

TASK = "patch:abnormal@other"


def _preset(tmp_path: Path, external: bool = True) -> dict:
    """The packaged preset's smoke budget: one count, one seed, SSL-GAN vs ConvNet, no extension."""
    data = read_yaml("idrid-ssl-gan")
    smoke = data["budgets"]["smoke"]
    smoke["data"]["options"]["out_dir"] = str(tmp_path / "synthetic")
    smoke["data"]["cache_dir"] = str(tmp_path / "cache")
    smoke["labelled"] = [4]
    smoke["gallery"] = {"n_labelled": 4, "images": 0}
    del data["learners"]["resnet34"], smoke["learners"]["resnet34"], smoke["extension"]
    data["baselines"], data["extension"] = ["convnet"], {"enabled": False}
    if external:  # the documented override pair: the list item, then a key inside it by index
        data = apply_overrides(data, [
            "evaluate_on=[{name: other, data: {source: synthetic, options: {n_images: 10, size: 256, "
            "prevalence: 0.5, seed: 21}}, label: dr_grade>=2}]",
            f"evaluate_on.0.data.options.out_dir={tmp_path / 'external'}"])
    return data


def _rows(run: RunDir) -> pd.DataFrame:
    results = read_results(run.results_file)
    return results[results["task"] == TASK]


def test_evaluate_on_is_checked(tmp_path: Path) -> None:
    data = _preset(tmp_path)
    with pytest.raises(ConfigError, match="unique"):
        experiment.resolve_config({**data, "evaluate_on": data["evaluate_on"] * 2}, "smoke")
    with pytest.raises(ConfigError, match="one task"):
        experiment.resolve_config({**data, "evaluate_on": [{**data["evaluate_on"][0], "task": "referable"}]}, "smoke")
    assert experiment.resolve_config(data, "smoke").evaluate_on[0].data.options["seed"] == 21


@pytest.mark.slow
def test_every_cell_scores_the_external_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _preset(tmp_path)
    run = RunDir.create(tmp_path / "runs", "ssl-gan-ext")
    experiment.run_ssl_gan_experiment(data, run, "smoke", False)

    rows = _rows(run)
    manifest = Manifest.load(tmp_path / "external" / "manifest.csv")
    truth = dict(zip(manifest.frame["id"].astype(str), (manifest.frame["dr_grade"].astype(int) >= 2).astype(int)))
    predictions = {}
    for method in ("ssl-gan", "convnet"):
        mine = rows[(rows["method"] == method) & (rows["protocol"] != "comparison")]
        metrics = dict(zip(mine["metric"], mine["value"]))
        frame = pd.read_csv(run.path / "predictions" / f"ssl-gan@other" / f"{method}-n004-s0.csv", dtype={"id": str})
        predictions[method] = frame
        assert metrics["n_test"] == len(frame) == len(manifest) and set(mine["n_labelled"]) == {4}
        assert frame["label"].tolist() == [truth[i] for i in frame["id"]]            # the mapping, per image
        logits = frame[[f"patch_{j:02d}" for j in range(64)]].to_numpy(float)
        np.testing.assert_allclose(frame["score"], (1 / (1 + np.exp(-logits))).sum(axis=1), rtol=1e-9)
        assert metrics["auc"] == pytest.approx(roc_auc_score(frame["label"], frame["score"]))
        # the kept classifier, applied by `retinassl predict`, gives the same scores
        out = predict(run.path / "cells" / f"{method}-n004-s0" / "classifier", manifest, tmp_path / f"predict-{method}",
                      cache_dir=tmp_path / "cache", match_scale=False)
        applied = pd.read_csv(out, dtype={"id": str}).set_index("id")["score"]
        np.testing.assert_allclose(applied.loc[frame["id"]].to_numpy(), frame["score"], rtol=1e-5)

    # the paired DeLong test of the two learners on the external images
    pair = rows[rows["method"] == "ssl-gan vs convnet"].set_index("metric")["value"]
    a, b = predictions["ssl-gan"], predictions["convnet"]
    assert pair["auc_difference"] == pytest.approx(roc_auc_score(a["label"], a["score"]) -
                                                   roc_auc_score(b["label"], b["score"]))
    assert 0 <= pair["delong_p"] <= 1
    in_domain = read_results(run.results_file)
    assert len(in_domain[(in_domain["task"] == "patch:abnormal") & (in_domain["metric"] == "delong_p")]) == 1

    # resumed: nothing is trained, scored or appended again
    count = len(read_results(run.results_file))
    scored: list[int] = []
    monkeypatch.setattr(experiment, "score_external", lambda *a, **k: scored.append(1) or [])
    monkeypatch.setattr(experiment, "train_learner", lambda *a, **k: pytest.fail("trained again"))
    experiment.run_ssl_gan_experiment(data, RunDir.resume(run.path), "smoke", True)
    assert scored == [] and len(read_results(run.results_file)) == count

    from retinassl.report.html import build_report

    page = build_report(run).read_text()
    assert "External validation: other" in page and "ssl-gan vs convnet" in page


@pytest.mark.slow
def test_a_sweep_resumed_with_evaluate_on_scores_its_done_cells(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir.create(tmp_path / "runs", "ssl-gan-late")
    experiment.run_ssl_gan_experiment(_preset(tmp_path, external=False), run, "smoke", False)
    assert _rows(run).empty

    monkeypatch.setattr(experiment, "train_learner", lambda *a, **k: pytest.fail("trained again"))
    experiment.run_ssl_gan_experiment(_preset(tmp_path), RunDir.resume(run.path), "smoke", True)
    rows = _rows(run)
    aucs = rows[rows["metric"] == "auc"]
    assert sorted(aucs["method"]) == ["convnet", "ssl-gan"]
    for method, value in zip(aucs["method"], aucs["value"]):
        frame = pd.read_csv(run.path / "predictions" / "ssl-gan@other" / f"{method}-n004-s0.csv")
        assert value == pytest.approx(roc_auc_score(frame["label"], frame["score"]))
    assert (rows["metric"] == "delong_p").sum() == 1

    count = len(read_results(run.results_file))  # resumed once more: the external rows are not redone
    monkeypatch.setattr(experiment, "score_external", lambda *a, **k: pytest.fail("scored again"))
    experiment.run_ssl_gan_experiment(_preset(tmp_path), RunDir.resume(run.path), "smoke", True)
    assert len(read_results(run.results_file)) == count
    assert external_module.scored_cells(run, experiment.SSLGANGrid(_preset(tmp_path), "smoke", run).externals[0]) == {
        ("ssl-gan", 4, 0), ("convnet", 4, 0)}

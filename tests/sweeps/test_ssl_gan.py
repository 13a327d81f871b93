"""The idrid-ssl-gan experiment on its smoke budget (synthetic data): results table, DeLong rows,
report section, and a resumed sweep that redoes nothing already done."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import retinassl.sweeps.ssl_gan as experiment
from retinassl.cli.sweep import runners
from retinassl.config import read_yaml
from retinassl.report.html import build_report
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir

pytestmark = pytest.mark.slow


def smoke_preset(tmp_path: Path) -> dict:
    """The packaged preset, smoke budget, trimmed to one count and no ResNet34 (test time)."""
    data = read_yaml("idrid-ssl-gan")
    smoke = data["budgets"]["smoke"]
    smoke["data"]["options"]["out_dir"] = str(tmp_path / "synthetic")
    smoke["data"]["cache_dir"] = str(tmp_path / "cache")
    smoke["extension"]["pool"]["options"]["out_dir"] = str(tmp_path / "pool")
    smoke["labelled"] = [4]
    smoke["gallery"] = {"n_labelled": 4, "images": 2}
    del data["learners"]["resnet34"], smoke["learners"]["resnet34"]
    data["baselines"] = ["convnet"]
    return data


def test_smoke_sweep_resumes_only_missing_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runners()["ssl-gan"] is experiment.run_ssl_gan_experiment
    data = smoke_preset(tmp_path)
    run = RunDir.create(tmp_path / "runs", "idrid-ssl-gan-smoke")
    trained, evaluated = [], []
    train, evaluate = experiment.train_learner, experiment.evaluate_bank

    def counting_train(learner, *args, **kwargs):
        trained.append(learner.method_name)
        return train(learner, *args, **kwargs)

    def failing_evaluate(*args, **kwargs):
        evaluated.append(1)
        if len(evaluated) == 3:
            raise RuntimeError("killed during the third cell's evaluation")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(experiment, "train_learner", counting_train)
    monkeypatch.setattr(experiment, "evaluate_bank", failing_evaluate)
    with pytest.raises(RuntimeError, match="killed"):
        experiment.run_ssl_gan_experiment(data, run, "smoke", False)
    assert trained == ["ssl-gan", "supervised", "ssl-gan"]       # the extension trained, then died
    results = read_results(run.results_file)
    assert set(results.loc[results["metric"] == "image_auc", "method"]) == {"ssl-gan", "convnet"}

    trained.clear()
    experiment.run_ssl_gan_experiment(data, RunDir.resume(run.path), "smoke", True)
    assert trained == []                                         # its saved classifier was reused
    import json

    saved = list(run.path.rglob("classifier/model.json"))
    assert saved and all(json.loads(f.read_text())["precision"]  # each records what its cell trained with
                         == json.loads((f.parent.parent / "run.json").read_text())["precision"] for f in saved)
    # each is the model `semisup train` saves: a threshold chosen on the split's validation images and the
    # training images' FOV scale, so `retinassl predict` gives a class on new images, not scores alone
    from retinassl.jobs.predict import ImageScorer, input_manifest, predict
    from retinassl.metrics.classification import operating_point

    patch_data = experiment._load(experiment.resolve_config(data, "smoke"))
    val_labels = patch_data.labels(patch_data.val)
    for f in saved:
        meta = json.loads(f.read_text())
        val_scores, _ = ImageScorer.load(f.parent).score(patch_data.prepared, patch_data.val)
        assert meta["operating_point"] == pytest.approx(operating_point(val_labels, val_scores))
        assert meta["fov_diameter"] > 0 and meta["data_fingerprint"]

    images = input_manifest([str(tmp_path / "synthetic")])
    predicted = pd.read_csv(predict(saved[0].parent, images.subset(list(range(3))), tmp_path / "predicted"))
    threshold = json.loads(saved[0].read_text())["operating_point"]["threshold"]
    assert (predicted["predicted"] == (predicted["score"] >= threshold).astype(int)).all()
    results = read_results(run.results_file)
    cells = results[results["metric"].isin(["patch_auc", "image_auc", "localisation_auc"])]
    assert len(cells) == 3 * 3 and cells["value"].between(0, 1).all()
    assert set(cells["method"]) == {"ssl-gan", "convnet", "ssl-gan+partB"}
    pairs = results[results["metric"] == "delong_p"]
    assert sorted(pairs["method"]) == ["ssl-gan vs convnet", "ssl-gan+partB vs ssl-gan"]
    # each cell that kept a validation pass's weights records that pass's score (a recipe is chosen on it)
    kept = results[results["metric"] == "selected_epoch"]
    scored = results[results["metric"].isin(["selected_val_patch_auc", "selected_val_auc"])]
    assert len(kept) and sorted(kept["method"]) == sorted(scored["method"]) and scored["value"].between(0, 1).all()
    assert (run.path / "predictions" / "ssl-gan" / "ssl-gan-n004-s0.csv").is_file()
    assert not list((run.path / "cells").glob("*/checkpoints"))   # cleaned once evaluated

    experiment.run_ssl_gan_experiment(data, RunDir.resume(run.path), "smoke", True)
    assert trained == [] and len(read_results(run.results_file)) == len(results)   # nothing redone
    # resumed with other patches, the done cells would be kept beside new ones: refused
    from retinassl.errors import ConfigError

    other = {**data, "patches": {**data["patches"], "min_pixels": data["patches"]["min_pixels"] + 5}}
    with pytest.raises(ConfigError, match="patches changed"):
        experiment.run_ssl_gan_experiment(other, RunDir.resume(run.path), "smoke", True)
    # a method setting the record lacks is accepted only at its default (the done cells ran with it)
    learners = data["budgets"]["smoke"]["learners"]
    method = {**learners["ssl-gan"]["method"], "select_on_validation": True, "select_metric": "image_auc"}
    other = {**data, "budgets": {**data["budgets"], "smoke": {**data["budgets"]["smoke"], "learners": {
        **learners, "ssl-gan": {**learners["ssl-gan"], "method": method}}}}}
    with pytest.raises(ConfigError, match="learners changed"):
        experiment.run_ssl_gan_experiment(other, RunDir.resume(run.path), "smoke", True)

    page = build_report(run).read_text()
    assert "Patch SSL-GAN vs supervised baselines" in page and "84.5 ± 11.5" in page
    patch_labels = pd.read_csv(run.path / "test-patch-labels.csv")
    assert patch_labels.shape[1] == 1 + 64 and set(patch_labels.iloc[:, 1:].to_numpy().ravel()) <= {0, 1}
    assert "Where the image-level AUC is lost" in page and "independent patch errors" in page
    hard = page.split("Diseased test images at 4 labels, the most missed first")[1].split("<h3>")[0]
    frame = pd.read_csv(run.path / "predictions" / "ssl-gan" / "ssl-gan-n004-s0.csv")
    for image_id in frame.loc[frame["label"] == 1, "id"]:      # one row per diseased test image
        assert f">{image_id}<" in hard
    assert list((run.report_dir / "figures").glob("sslgan-heatmap-ssl-gan-*.png"))
    assert (run.report_dir / "figures" / "sslgan-roc.png").is_file()

    # carried to another machine as an archive (no weights, no cell folders): resumed there, nothing
    # is trained again, nothing is added, and the report is rebuilt from the archived rows
    from retinassl.io.archive import archive_run, restore_run

    run.update_status(status="failed")
    restored = RunDir(restore_run(archive_run(run.path, tmp_path / "archives"), tmp_path / "machine2"))
    assert not (restored.path / "cells").exists()
    experiment.run_ssl_gan_experiment(data, RunDir.resume(restored.path), "smoke", True)
    assert trained == []
    pd.testing.assert_frame_equal(read_results(restored.results_file), read_results(run.results_file))
    assert "84.5 ± 11.5" in build_report(restored).read_text()


def test_a_diverged_cell_is_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import numpy as np

    from retinassl.errors import TrainingDiverged

    from retinassl.sweeps.grid import work

    run = RunDir.create(tmp_path / "runs", "diverging")
    grid = experiment.SSLGANGrid(smoke_preset(tmp_path), "smoke", run)
    grid._data = SimpleNamespace(train=np.arange(12))  # the cell function below reads no data
    done = []

    def fake_cell(config, learner, data, run, label, n, seed, use_pool):
        if label == "ssl-gan":
            raise TrainingDiverged("the generator collapsed")
        done.append(label)

    monkeypatch.setattr(experiment, "run_cell", fake_cell)
    monkeypatch.setattr(experiment, "append_comparisons", lambda *a: None)
    work(grid, claims=False)
    assert done == ["convnet", "ssl-gan+partB"]                  # the sweep went on
    results = read_results(run.results_file)
    assert results.loc[results["metric"] == "diverged", "method"].tolist() == ["ssl-gan"]
    assert results.loc[results["metric"] == "image_auc", "value"].isna().all()
    assert "collapsed" in (run.path / "cells" / "ssl-gan-n004-s0" / "diverged.txt").read_text()


def test_delong_table_splits_significant_seeds_by_direction() -> None:
    from retinassl.metrics.ssl_gan_summary import delong_table

    rows = []
    for seed, (p, diff) in enumerate([(0.01, 0.10), (0.02, -0.08), (0.30, 0.05), (0.001, -0.21)]):
        rows += [{"method": "ssl-gan vs convnet", "n_labelled": 40, "seed": seed, "metric": "delong_p",
                  "value": p},
                 {"method": "ssl-gan vs convnet", "n_labelled": 40, "seed": seed,
                  "metric": "auc_difference", "value": diff}]
    table = delong_table(pd.DataFrame(rows))
    assert table.loc[0, "seeds p<0.05"] == "+1/-2 of 4"
    assert table.loc[0, "AUC difference (mean, pts)"] == "-3.5"    # (10 - 8 + 5 - 21) / 4


def test_the_sweep_trains_the_reference_and_the_baselines_only() -> None:
    from retinassl.config import apply_overrides
    from retinassl.sweeps.ssl_gan import plan_cells, resolve_config

    data = read_yaml("idrid-ssl-gan")
    full = plan_cells(resolve_config(data, "smoke"))
    assert {c[0] for c in full} == {"ssl-gan", "convnet", "resnet34", "ssl-gan+partB"}
    alone = plan_cells(resolve_config(apply_overrides(data, ["baselines=[]", "extension.enabled=false"]),
                                      "smoke"))
    assert {c[0] for c in alone} == {"ssl-gan"} and len(alone) == 2      # labelled [4, 12] x seed 0
    one = plan_cells(resolve_config(apply_overrides(data, ["baselines=[convnet]"]), "smoke"))
    assert {c[0] for c in one} == {"ssl-gan", "convnet", "ssl-gan+partB"}


def test_tables_leave_out_the_cells_a_narrowed_resume_dropped() -> None:
    from retinassl.metrics.ssl_gan_summary import planned_results

    rows = [("ssl-gan", 10, 0), ("convnet", 10, 0), ("ssl-gan", 10, 4), ("ssl-gan+partB", 10, 0),
            ("ssl-gan vs convnet", 10, 0), ("ssl-gan vs convnet", 10, 4), ("ssl-gan+partB vs ssl-gan", 10, 0),
            ("ssl-gan", 20, 0)]
    results = pd.DataFrame([{"method": m, "n_labelled": n, "seed": s, "metric": "image_auc", "value": 0.5}
                            for m, n, s in rows])
    config = {"reference": "ssl-gan", "baselines": ["convnet"], "labelled": [10], "seeds": [0, 1],
              "extension": {"enabled": False, "label": "ssl-gan+partB"}}
    kept = planned_results(results, config)
    assert list(zip(kept["method"], kept["seed"])) == [("ssl-gan", 0), ("convnet", 0), ("ssl-gan vs convnet", 0)]
    config["extension"]["enabled"] = True
    assert len(planned_results(results, config)) == 5
    config["extension"]["seeds"] = [1]     # the extension's own samplings (as the cpu budget sets them)
    assert ("ssl-gan+partB", 0) not in set(zip(*[planned_results(results, config)[k] for k in ("method", "seed")]))


def test_selection_without_validation_patches_is_refused(tmp_path: Path) -> None:
    from retinassl.errors import ConfigError

    data = smoke_preset(tmp_path)
    smoke = data["budgets"]["smoke"]["learners"]["ssl-gan"]
    smoke["method"]["select_on_validation"] = True
    smoke["val_patches"] = 0
    run = RunDir.create(tmp_path / "runs", "idrid-ssl-gan-smoke")
    with pytest.raises(ConfigError, match="select_on_validation needs validation patches"):
        experiment.run_ssl_gan_experiment(data, run, "smoke", False)


def test_selection_on_validation_images_needs_every_validation_patch(tmp_path: Path) -> None:
    from retinassl.errors import ConfigError

    data = smoke_preset(tmp_path)
    smoke = data["budgets"]["smoke"]["learners"]["ssl-gan"]
    smoke["method"].update(select_on_validation=True, select_metric="image_auc")
    smoke["val_patches"] = 5
    run = RunDir.create(tmp_path / "runs", "idrid-ssl-gan-smoke")
    with pytest.raises(ConfigError, match="needs all .* validation patches"):
        experiment.run_ssl_gan_experiment(data, run, "smoke", False)


def test_a_supervised_extension_learns_from_the_pool_as_image_level_bags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import retinassl.jobs.patch_training as training
    from retinassl.data.patch_bank import PatchesAndBags

    data = smoke_preset(tmp_path)
    data.update(reference="convnet", baselines=[])
    data["extension"].update(enabled=True, learner="convnet", label="convnet+bags")
    datasets, fit = [], training.fit

    def recording_fit(method, dataset, **kwargs):
        datasets.append(dataset)
        return fit(method, dataset, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    run = RunDir.create(tmp_path / "runs", "bags")
    experiment.run_ssl_gan_experiment(data, run, "smoke", False)
    assert [type(d).__name__ for d in datasets] == ["LabelledPatches", "PatchesAndBags"]
    bags = datasets[1]
    assert isinstance(bags, PatchesAndBags) and bags.bags.n_images == 6      # the smoke pool
    assert bags.bag_labels.tolist() == [1] * 6                               # all diseased (prevalence 1)
    results = read_results(run.results_file)
    assert results.loc[results["metric"] == "image_auc", "method"].tolist() == ["convnet", "convnet+bags"]
    assert "convnet+bags vs convnet" in set(results.loc[results["metric"] == "delong_p", "method"])


def test_bags_for_a_non_binary_learner_are_refused_before_training(tmp_path: Path) -> None:
    import copy

    from retinassl.errors import ConfigError

    data = smoke_preset(tmp_path)
    data.update(reference="convnet", baselines=[])
    data["learners"]["convnet-multiclass"] = copy.deepcopy(data["learners"]["convnet"])
    data["learners"]["convnet-multiclass"]["method"]["task"] = "multiclass"
    smoke = data["budgets"]["smoke"]["learners"]
    smoke["convnet-multiclass"] = copy.deepcopy(smoke["convnet"])
    data["extension"].update(enabled=True, learner="convnet-multiclass", label="convnet+bags")
    run = RunDir.create(tmp_path / "runs", "bags")
    with pytest.raises(ConfigError, match="need the binary task, not 'multiclass'"):
        experiment.run_ssl_gan_experiment(data, run, "smoke", False)


def test_rows_name_each_learners_initialisation(tmp_path: Path) -> None:
    """A learner started from a pretrained encoder is not reported as scratch (results, divergences)."""
    grid = experiment.SSLGANGrid(smoke_preset(tmp_path), "smoke", RunDir.create(tmp_path / "runs", "inits"))
    config = grid.config
    convnet = config.learners["convnet"]
    given = convnet.model_copy(update={"model": convnet.model.model_copy(
        update={"init": str(tmp_path / "pretrain-rotation-7" / "encoder")})})
    assert experiment._row(config, "convnet", convnet, 4, 0, 12, "image_auc", 0.5)["init"] == "scratch"
    row = experiment._row(config, "convnet", given, 4, 0, 12, "image_auc", 0.5)
    assert row["init"] == "pretrain-rotation-7" and row["protocol"] == "supervised"
    run = RunDir.create(tmp_path / "runs", "diverged")
    experiment._record_divergence(config, run, "convnet", given, 4, 0, 12, "nan loss")
    rows = read_results(run.results_file)
    assert set(rows["init"]) == {"pretrain-rotation-7"} and set(rows["protocol"]) == {"supervised"}
    # a DeLong row of the SSL-GAN (scratch) against that ConvNet names both initialisations
    from types import SimpleNamespace

    given_config = config.model_copy(update={"learners": {**config.learners, "convnet": given}})
    for label, scores in (("ssl-gan", [0.1, 0.9, 0.4, 0.7]), ("convnet", [0.2, 0.6, 0.5, 0.8])):
        path = experiment.predictions_path(run, label, 4, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"id": list("abcd"), "label": [0, 1, 0, 1], "score": scores}).to_csv(path, index=False)
    compared = experiment._task_comparisons(given_config, run, SimpleNamespace(train=list(range(12))),
                                            experiment.TASK, path.parent)
    assert {row["init"] for row in compared} == {"scratch vs pretrain-rotation-7"}
    assert {row["method"] for row in compared} == {"ssl-gan vs convnet"}
    unchanged = experiment._task_comparisons(config, run, SimpleNamespace(train=list(range(12))),
                                             experiment.TASK, path.parent)
    assert {row["init"] for row in unchanged} == {"scratch"}                  # both from scratch: one name


def test_a_learners_encoder_prepared_otherwise_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from retinassl.errors import ConfigError
    from retinassl.models import build_encoder
    from retinassl.models.checkpoint import save_encoder

    data = smoke_preset(tmp_path)
    encoder = save_encoder(tmp_path / "enc", build_encoder("convnet", width=4), arch="convnet", kwargs={"width": 4},
                           preprocess={"size": 64, "clahe": True})                # no SSL-GAN preset equalises
    data["learners"]["convnet"]["model"]["init"] = str(encoder)
    run = RunDir.create(tmp_path / "runs", "refused-init")
    grid = experiment.SSLGANGrid(data, "smoke", run)
    with pytest.raises(ConfigError, match=r"learners\.convnet\.model\.init: .*preprocess\.clahe is False"):
        grid.prepare()
    assert not run.config_file.exists()                                 # refused before the config is recorded


def test_a_cell_name_parses_back_to_its_label_count_and_seed():
    from retinassl.sweeps.ssl_gan import cell_name, parse_cell_name

    for label, n, seed in [("ssl-gan", 149, 0), ("ssl-gan+partB", 10, 4), ("convnet", 1234, 12)]:
        assert parse_cell_name(cell_name(label, n, seed)) == (label, n, seed)
    assert parse_cell_name("ssl-gan-n010-s3") == ("ssl-gan", 10, 3)
    with pytest.raises(ValueError, match="not an SSL-GAN sweep cell"):
        parse_cell_name("ssl-gan-149-3")

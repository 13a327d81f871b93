"""The transfer sweep: nested label fractions, a smoke sweep on synthetic data, resuming, comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from retinassl.models.checkpoint import load_encoder, save_encoder
from retinassl.data.manifest import Manifest
from retinassl.sweeps import transfer as sweep_module
from retinassl.sweeps.grid import work
from retinassl.sweeps.transfer import TransferGrid, run_transfer
from retinassl.sweeps.transfer_data import evaluation_folds, label_subsets
from retinassl.sweeps.transfer_config import resolve_config


def done_cells(config, run: RunDir) -> set[tuple]:
    return TransferGrid(config.model_dump(mode="json"), run).done()
from retinassl.metrics.tasks import TaskSpec
from retinassl.models import build_encoder
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir

FRACTIONS = [0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]


def _grades(n: int = 413, seed: int = 0) -> Manifest:
    grades = np.random.default_rng(seed).choice(5, size=n, p=[0.33, 0.05, 0.33, 0.18, 0.11])
    frame = pd.DataFrame({"id": [f"im{i}" for i in range(n)], "image": "x.png", "patient": "",
                          "eye": "", "split": "train", "dr_grade": grades})
    return Manifest(frame, Path("."))


def test_label_fractions_nested_across_fractions_and_paired_across_tasks() -> None:
    manifest = _grades()
    referable = TaskSpec(name="referable", label="dr_grade", positive_from=2, stratify="dr_grade")
    grade = TaskSpec(name="dr_grade", kind="multiclass", label="dr_grade")
    train = np.arange(len(manifest))
    by_seed = {}
    for seed in (0, 1, 2):
        subsets = label_subsets(manifest, referable, train, FRACTIONS, seed, None)
        sizes = [len(subsets[f]) for f in FRACTIONS]
        assert sizes == [5, 9, 21, 42, 104, 207, 413]                  # ceil(f * 413)
        for small, large in zip(FRACTIONS, FRACTIONS[1:]):
            assert set(subsets[small]) <= set(subsets[large])           # nested
        assert set(manifest.labels("dr_grade")[subsets[0.01]]) == set(range(5))  # every grade at 1 %
        # the same subsets for the grading task (same strata) and whatever other fractions are asked
        assert all(np.array_equal(subsets[f], label_subsets(manifest, grade, train, [f, 0.3], seed, None)[f])
                   for f in FRACTIONS)
        by_seed[seed] = subsets
    assert not np.array_equal(by_seed[0][0.1], by_seed[1][0.1])        # seeds draw other subsets
    # folds: another ordering per fold
    assert not np.array_equal(label_subsets(manifest, grade, train, [0.1], 0, 0)[0.1],
                              label_subsets(manifest, grade, train, [0.1], 0, 1)[0.1])


def test_kfold_when_there_is_no_test_split() -> None:
    manifest = _grades(150)
    folds = evaluation_folds(manifest, TaskSpec(name="g", kind="multiclass", label="dr_grade"), 5, 0)
    assert [f for f, _, _ in folds] == [0, 1, 2, 3, 4]
    tested = np.concatenate([test for _, _, test in folds])
    assert sorted(tested) == list(range(150))
    assert all(not set(train) & set(test) for _, train, test in folds)


def _config(root: Path, encoder_dir: Path, **extra) -> dict:
    # the cache lives next to the test's encoder (its tmp_path): tests that count feature
    # extractions must not find features another test cached for an identical encoder
    return {
        "kind": "transfer", "name": "smoke", "seed": 0,
        "data": {"source": "manifest", "manifest": str(root / "data" / "manifest.csv"),
                 "cache_dir": str(encoder_dir.parent / "cache")},
        "preprocess": {"size": 32},
        "model": {"arch": "convnet", "kwargs": {"width": 8}},
        "inits": [{"name": "scratch"}, {"name": "other", "init": str(encoder_dir)}],
        "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2},
                  {"name": "grade", "kind": "multiclass", "label": "dr_grade", "positive_from": 2}],
        "fractions": [0.5, 1.0], "seeds": [0, 1], "finetune_seeds": [0], "finetune_fractions": [1.0],
        "probe": {"c_grid": [1.0]},
        "finetune": {"epochs": 1, "min_steps": 1, "max_steps": 2, "patience": 0},
        "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "precision": "32"},
        "explain": {"tsne": True, "gradcam": 2},
        "budgets": {"smoke": {"fractions": [0.25, 1.0], "explain": {"tsne": True, "gradcam": 1}}},
        **extra}


@pytest.mark.slow
def test_smoke_sweep_resumes_only_missing_cells(tiny_root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    save_encoder(tmp_path / "enc", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    data = _config(tiny_root, tmp_path / "enc")
    config = resolve_config(data, "smoke")
    assert config.fractions == [0.25, 1.0]
    run = RunDir.create(tmp_path / "runs", "smoke")
    calls = {"n": 0}
    real = sweep_module.finetune

    def dies_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "finetune", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(config, run)
    first = done_cells(config, run)
    # the first init's probes (2 tasks x 2 seeds x 2 fractions) and fine-tunings (2 tasks) and
    # the second init's probes are done, its fine-tunings are not
    assert len(first) == 8 + 2 + 8
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "finetune", counting)
    from retinassl.jobs import features as features_module

    embedded = []
    real_embed = features_module.embed
    monkeypatch.setattr(features_module, "embed", lambda *a, **k: embedded.append(1) or real_embed(*a, **k))
    run_transfer(config, RunDir.resume(run.path))
    # each init's features were extracted once, in the first run; the t-SNE maps reuse them
    assert len(embedded) == 0
    # 2 inits x 2 tasks x 1 fraction x 1 seed fine-tunings in all, 2 were done before
    assert counted["n"] == 4 - 2
    results = read_results(run.results_file)
    assert results.loc[results["metric"] == "extracted_images", "value"].tolist() == [40, 40]
    cells = results[results["metric"] == "n_test"]
    assert len(cells) == 16 + 4                                         # each cell exactly once
    assert not cells.duplicated(["task", "init", "protocol", "fraction", "seed", "fold"]).any()
    # the same labelled images for both inits (paired) and predictions for every cell
    n_lab = cells.pivot_table(index=["task", "protocol", "fraction", "seed"], columns="init",
                              values="n_labelled")
    assert (n_lab["scratch"] == n_lab["other"]).all()
    assert len(list((run.path / "predictions" / "transfer").rglob("*.csv"))) == 20
    # resumed at another resolution (or another fine-tuning recipe) the done cells would be kept and
    # mixed with new ones: refused before anything runs, naming what changed; more seeds only add cells
    from retinassl.errors import ConfigError

    for change, name in [({"preprocess": config.preprocess.model_copy(update={"size": 48})}, "preprocess"),
                         ({"finetune": config.finetune.model_copy(update={"lr": 0.1})}, "finetune")]:
        with pytest.raises(ConfigError, match=f"{name} changed"):
            run_transfer(config.model_copy(update=change), RunDir.resume(run.path))
    assert len(read_results(run.results_file)) == len(results)
    # a run recorded before the probe's inner_cv existed chose C on folds over the rows: resumed with the
    # grouped folds its probe cells would be mixed with others, so only `probe.inner_cv: rows` resumes it
    import json

    settings = run.path / "grid.settings.json"
    recorded = json.loads(settings.read_text())
    assert recorded["probe"].pop("inner_cv") == "grouped"
    settings.write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match="probe changed"):
        run_transfer(config, RunDir.resume(run.path))
    rows = config.model_copy(update={"probe": config.probe.model_copy(update={"inner_cv": "rows"})})
    run_transfer(rows, RunDir.resume(run.path))
    assert len(read_results(run.results_file)) == len(results)
    # the comparison: DeLong p-values for the other init at every fraction, not for the reference
    table = pd.read_csv(run.path / "comparison.csv")
    auc = table[(table["metric"] == "auc") & (table["task"] == "referable")]
    assert auc.loc[auc["init"] == "other", "p"].between(0, 1).all()
    assert auc.loc[auc["init"] == "scratch", "p"].isna().all()
    assert set(table["metric"]) == {"auc", "kappa", "auc_bin"}
    assert "| other |" in (run.path / "comparison.md").read_text()
    figures = run.path / "report" / "figures"
    assert {p.name for p in figures.glob("*.png")} >= {"tsne-scratch.png", "tsne-other.png",
                                                       "gradcam-scratch.png", "gradcam-other.png"}
    assert not list((run.path / "cells").glob("*/checkpoints"))         # work directories removed
    # the report sections draw the curves and the p-value table from results + predictions alone
    from retinassl.report.transfer import transfer_curves_section, transfer_delong_section

    assert "transfer-referable-auc.png" in transfer_curves_section(run).html
    assert "other" in transfer_delong_section(run).html


def test_config_checks(tiny_root: Path, tmp_path: Path) -> None:
    from retinassl.errors import ConfigError

    with pytest.raises(ConfigError, match="reference"):
        resolve_config(_config(tiny_root, tmp_path, reference="imagenet"), None)
    with pytest.raises(ConfigError, match="budget"):
        resolve_config(_config(tiny_root, tmp_path), "full")
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_config(_config(tiny_root, tmp_path, epochs=3), None)
    typo = [{"name": "scratch"}, {"name": "rot", "pretrain": {"method": {"name": "rotation", "copiez": 2}}}]
    with pytest.raises(ConfigError, match="copiez"):  # caught before anything runs
        resolve_config(_config(tiny_root, tmp_path, inits=typo), None)
    sweep = TransferGrid(resolve_config(_config(tiny_root, tmp_path), None).model_dump(mode="json"), RunDir(tmp_path))
    assert sweep.model_of(sweep.config.inits[1]).init == str(tmp_path)


def test_downstream_only_drops_the_pool_everywhere_and_leaves_the_input_alone() -> None:
    from retinassl.sweeps.transfer_config import downstream_only

    pool = {"data": [{"source": "drive", "options": {"root": "$RETINASSL_DATA_ROOT/drive"}}]}
    data = {"pool": pool, "seeds": [0, 1], "budgets": {"cpu": {"pool": pool, "seeds": [0]}, "smoke": None}}
    before = repr(data)
    assert downstream_only(data) == {"seeds": [0, 1], "budgets": {"cpu": {"seeds": [0]}, "smoke": {}}}
    assert repr(data) == before
    assert downstream_only({"seeds": [0]}) == {"seeds": [0]}  # no budgets key is not made one


def test_a_given_encoder_prepared_otherwise_is_refused_before_anything_runs(tiny_root: Path, tmp_path: Path) -> None:
    """An encoder pretrained on colour-standardised images, given to a study that would not standardise
    them (a forgotten `preprocess.color_standardize=true`): every number would be silently off."""
    from retinassl.errors import ConfigError

    save_encoder(tmp_path / "enc", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8},
                 preprocess={"size": 64, "color_standardize": True})
    config = resolve_config(_config(tiny_root, tmp_path / "enc", protocols=["probe"]), None)
    run = RunDir.create(tmp_path / "runs", "refused")
    with pytest.raises(ConfigError, match="init other: .*color_standardize is False, the encoder's True"):
        run_transfer(config, run)
    assert not run.results_file.exists() and not (run.path / "cells").exists()
    # with the encoder's preparation (at the study's own size) it runs
    fitting = config.model_copy(update={"preprocess": config.preprocess.model_copy(update={"color_standardize": True}),
                                        "fractions": [1.0], "seeds": [0],
                                        "explain": config.explain.model_copy(update={"tsne": False, "gradcam": 0})})
    run_transfer(fitting, RunDir.create(tmp_path / "runs", "fits"))


def test_workers_share_the_cells_by_claims(tiny_root: Path, tmp_path: Path) -> None:
    # what each of `workers` processes does (in one process here: spawning costs seconds per worker):
    # a cell claimed by another worker is left to it, and no cell runs twice
    torch.manual_seed(6)
    save_encoder(tmp_path / "enc", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    config = resolve_config(_config(tiny_root, tmp_path / "enc", protocols=["probe"], workers=2,
                                    explain={"tsne": False, "gradcam": 0}), None)
    run = RunDir.create(tmp_path / "runs", "workers")
    grid = TransferGrid(config.model_dump(mode="json"), run)
    grid.prepare()
    cells = grid.cells()
    held = cells[::2]                                                   # claimed by the other worker
    for cell in held:
        (run.path / "cells" / grid.cell_name(cell)).mkdir(parents=True)
        (run.path / "cells" / grid.cell_name(cell) / "claim").write_text("12345")
    assert work(grid, claims=True) == len(cells) - len(held)
    assert done_cells(config, run) == {grid.cell_key(c) for c in cells[1::2]}
    assert not (run.path / "comparison.csv").exists()                   # only the main process writes it
    run_transfer(config.model_copy(update={"workers": 1}), RunDir.resume(run.path))  # claims cleared; the rest run
    results = read_results(run.results_file)
    cells_done = results[results["metric"] == "n_test"]
    assert len(cells_done) == 2 * 2 * 2 * 2                             # inits x tasks x seeds x fractions
    assert not cells_done.duplicated(["task", "init", "protocol", "fraction", "seed", "fold"]).any()
    assert (run.path / "comparison.csv").is_file()


def test_kfold_multilabel_sweep_without_a_test_split(tiny_root: Path, tmp_path: Path) -> None:
    # no official test split: 2-fold cross-validation; an RFMiD-style multi-label task
    manifest = Manifest.load(tiny_root / "data" / "manifest.csv")
    frame = manifest.frame
    frame["split"] = ""
    frame["disease_DR"] = (frame["dr_grade"] > 0).astype(int)
    frame["disease_ME"] = (frame["dme"] > 0).astype(int)
    manifest.save(tmp_path / "kfold.csv")
    data = _config(tiny_root, tmp_path, protocols=["probe"], folds=2, seeds=[0],
                   inits=[{"name": "scratch"}],
                   tasks=[{"name": "diseases", "kind": "multilabel", "label": "disease_"},
                          {"name": "dme", "kind": "multiclass", "label": "dme"}],
                   explain={"tsne": False, "gradcam": 0})
    data["data"]["manifest"] = str(tmp_path / "kfold.csv")
    run = RunDir.create(tmp_path / "runs", "kfold")
    run_transfer(resolve_config(data, None), run)
    results = read_results(run.results_file)
    cells = results[results["metric"] == "n_test"]
    assert set(cells["fold"]) == {0, 1} and len(cells) == 2 * 2 * 2     # tasks x folds x fractions
    for task in ("diseases", "dme"):                                    # every image tested once per seed
        assert cells[(cells["task"] == task) & (cells["fraction"] == 1.0)]["value"].sum() == len(frame)
    assert {"auc_macro", "auc[disease_DR]", "auc[disease_ME]", "kappa"} <= set(results["metric"])
    table = pd.read_csv(run.path / "comparison.csv")
    assert set(table["metric"]) == {"auc_macro", "kappa"} and table["p"].isna().all()
    pred = pd.read_csv(next((run.path / "predictions" / "transfer" / "diseases").rglob("*-k0.csv")))
    assert {"label[disease_DR]", "score[disease_ME]"} <= set(pred.columns)


def test_two_step_init_pretrains_on_the_earlier_encoder(tiny_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``init: <an earlier init>`` with ``pretrain`` continues from that init's encoder (the paper's
    two-step variant); an init naming itself or a later one is refused before anything runs."""
    from retinassl.errors import ConfigError
    from retinassl.jobs import pretrain as pretrain_module

    step = {"method": {"name": "rotation"}, "engine": {"max_steps": 1, "batch_size": 4}}
    inits = [{"name": "scratch"}, {"name": "ssl", "pool": "train", "pretrain": step},
             {"name": "ssl_then_rot", "init": "ssl", "pool": "train", "pretrain": step}]
    config = resolve_config(_config(tiny_root, tmp_path / "enc", inits=inits), None)
    started_from = {}
    real = pretrain_module.run_pretrain

    def recording(cfg, run, **kwargs):
        started_from[cfg.name] = cfg.model.init
        return real(cfg, run, **kwargs)

    monkeypatch.setattr(pretrain_module, "run_pretrain", recording)
    grid = TransferGrid(config.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "two-step"))
    second = grid.model_of(config.inits[2]).init
    first = str(grid.run.path / "pretrain" / "ssl" / "encoder")
    assert started_from == {"smoke-ssl": "scratch", "smoke-ssl_then_rot": first}
    assert second == str(grid.run.path / "pretrain" / "ssl_then_rot" / "encoder") != first
    for bad in ([inits[0], inits[2], inits[1]],                       # the first step comes later
                [inits[0], {"name": "loop", "init": "loop", "pretrain": step}],
                [inits[0], {"name": "plain", "init": "scratch"}, {"name": "x", "init": "plain"}]):
        with pytest.raises(ConfigError, match="two-step"):
            resolve_config(_config(tiny_root, tmp_path / "enc", inits=bad), None)
    # the first step left out of the sweep (e.g. by --inits): refused, not pretrained from random weights
    alone = resolve_config(_config(tiny_root, tmp_path / "enc", inits=[inits[0], inits[2]]), None)
    lone = TransferGrid(alone.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "alone"))
    with pytest.raises(ConfigError, match="init ssl_then_rot: init 'ssl' is neither 'scratch'.*first step"):
        lone.model_of(alone.inits[1])


def test_two_step_from_a_given_vit_keeps_the_vit_and_its_weights(tiny_root: Path, tmp_path: Path) -> None:
    """A saved ViT (e.g. an earlier run's MAE encoder), then supervised ("Fundus") pretraining on it:
    the second step trains that ViT from its weights, although its pretrain block names no model and
    the sweep's model is a convnet."""
    torch.manual_seed(123)
    given = build_encoder("vit_tiny", patch_size=8, img_size=32)
    with torch.no_grad():
        for p in given.parameters():
            p.add_(0.5)                                # weights no fresh initialisation has
    given_dir = save_encoder(tmp_path / "given", given, arch="vit_tiny", kwargs={"patch_size": 8, "img_size": 32},
                             method="mae")
    engine = {"max_steps": 1, "batch_size": 4, "checkpoint_every_n_steps": -1, "precision": "32"}
    fundus = {"label": "dr_grade", "engine": engine, "method": {"name": "supervised", "task": "binary"}}
    inits = [{"name": "scratch"}, {"name": "mae", "init": str(given_dir)},
             {"name": "mae_fundus", "init": "mae", "pool": "train", "pretrain": fundus}]
    config = resolve_config(_config(tiny_root, tmp_path / "enc", inits=inits), None)
    grid = TransferGrid(config.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "two-step-vit"))
    second, meta = load_encoder(grid.model_of(config.inits[2]).init)
    assert meta["arch"] == "vit_tiny" and meta["method"] == "supervised"
    assert meta["init_source"] == str(given_dir)
    start, trained = given.state_dict(), second.state_dict()
    assert max(float((start[k] - trained[k]).abs().max()) for k in start) < 0.05   # one step from them
    # the given encoder named directly as the pretraining's start (no first-step init in the sweep)
    direct = resolve_config(_config(tiny_root, tmp_path / "enc", inits=[
        {"name": "scratch"}, {"name": "direct", "init": str(given_dir), "pool": "train", "pretrain": fundus}]), None)
    grid = TransferGrid(direct.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "direct"))
    _, meta = load_encoder(grid.model_of(direct.inits[1]).init)
    assert meta["arch"] == "vit_tiny" and meta["init_source"] == str(given_dir)


def test_an_mae_init_brings_its_reconstructions_into_the_sweep_report(tiny_root: Path, tmp_path: Path) -> None:
    """A pretrained MAE initialisation: its encoder is a ViT (the checkpoint's architecture, not the
    sweep's convnet) and its reconstructions figure is copied into the sweep's report figures."""
    mae = {"model": {"arch": "vit_tiny", "kwargs": {"patch_size": 8, "img_size": 32}},
           "method": {"name": "mae", "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
           "engine": {"max_steps": 1, "batch_size": 4, "checkpoint_every_n_steps": -1, "precision": "32"}}
    inits = [{"name": "scratch"}, {"name": "mae", "pool": "train", "pretrain": mae}]
    config = resolve_config(_config(tiny_root, tmp_path / "enc", inits=inits), None)
    grid = TransferGrid(config.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "mae"))
    encoder_dir = Path(grid.model_of(config.inits[1]).init)
    encoder, meta = load_encoder(encoder_dir)
    assert meta["arch"] == "vit_tiny" and meta["method"] == "mae"
    own = grid.run.path / "pretrain" / "mae" / "report" / "figures" / "reconstructions-mae.png"
    copied = grid.run.report_dir / "figures" / "reconstructions-mae.png"
    assert own.is_file() and copied.read_bytes() == own.read_bytes()


def test_a_lesion_segmentation_init_pretrains_on_the_pools_images_with_masks(tiny_root: Path, tmp_path: Path) -> None:
    """Segmentation pretraining as an initialisation: it trains on the sweep's cleaned pool (saved
    as data/pool.csv and read back), on the images that have a lesion mask only, and its encoder (a
    U-Net's) becomes the initialisation."""
    pool = pd.read_csv(tiny_root / "data" / "manifest.csv")
    lesions = ["mask_MA", "mask_HE", "mask_EX", "mask_SE"]
    pool.loc[pool.index[::3], lesions] = np.nan  # a third of the pool has no lesion annotation
    pool_csv = tiny_root / "data" / f"pool-{tmp_path.name}.csv"  # beside the images its paths name
    pool.to_csv(pool_csv, index=False)
    pretrain = {"mask": lesions,
                "method": {"name": "segmentation", "patch_size": 32, "patches_per_image": 1, "geometric": "dihedral"},
                "engine": {"max_steps": 2, "batch_size": 4, "checkpoint_every_n_steps": -1, "precision": "32"}}
    inits = [{"name": "scratch"}, {"name": "lesions", "pretrain": pretrain}]
    config = resolve_config(_config(tiny_root, tmp_path / "enc", inits=inits,
                                    pool={"data": [{"source": "manifest", "manifest": str(pool_csv)}],
                                          "detect_duplicates": False}), None)
    grid = TransferGrid(config.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "lesions"))
    try:
        encoder, meta = load_encoder(grid.model_of(config.inits[1]).init)
    finally:
        pool_csv.unlink()
    assert meta["method"] == "segmentation" and meta["arch"] == "convnet" and meta["batches"] == 2
    cleaned = pd.read_csv(grid.run.path / "data" / "pool.csv")
    with_masks = cleaned[lesions].notna().any(axis=1)
    assert 0 < with_masks.sum() < len(cleaned)
    assert meta["pool_size"] == with_masks.sum()
    assert "test" not in set(cleaned["split"])  # the cleaning left the downstream test images out
    # the training images whose masks it read (or their patients') are never held out for a choice
    down = grid.downstream().manifest.frame
    read = cleaned[with_masks]
    patients = set(read["patient"].fillna("").astype(str)) - {""}
    expected = down["id"].astype(str).isin(set(read["id"].astype(str))) | down["patient"].fillna("").astype(str).isin(patients)
    annotated = grid.annotated(str(grid.model_of(config.inits[1]).init))
    assert annotated.any() and np.array_equal(annotated, expected.to_numpy())
    assert not grid.annotated("scratch").any()


def test_fine_tuning_cells_tuning_and_probes_never_validate_on_what_the_pretraining_read(
        tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fine-tuning of the sweep (tuning runs and cells) gets its init's annotated rows, so that its
    early stopping never validates on them, and so does each probe's choice of C (and the probe that
    starts a fine-tuning's head); scratch gets none; the counts are recorded."""
    import json

    from retinassl.jobs import finetune as finetune_module, probe as probe_module
    from retinassl.sweeps import transfer as transfer_module, transfer_tuning

    real = transfer_module.finetune
    seen: list[tuple[str, int]] = []

    def recording(model, *args, never_held_out=None, **kwargs):
        seen.append((str(model.init), int(np.asarray(never_held_out).sum())))
        result = real(model, *args, never_held_out=never_held_out, **kwargs)
        assert len(result.val_rows) and not np.asarray(never_held_out)[result.val_rows].any()
        return result

    real_folds = probe_module.inner_folds
    kept_out: list[tuple[int, bool]] = []

    def folds_recording(labels, groups, k, seed, always_fitted=None):
        folds = real_folds(labels, groups, k, seed, always_fitted)
        marked = np.zeros(len(labels), dtype=bool) if always_fitted is None else np.asarray(always_fitted)
        kept_out.append((int(marked.sum()), folds is not None))
        assert not any(marked[val].any() for _, val in folds or [])
        return folds

    monkeypatch.setattr(transfer_module, "finetune", recording)
    monkeypatch.setattr(transfer_tuning, "finetune", recording)
    monkeypatch.setattr(probe_module, "inner_folds", folds_recording)
    real_head = finetune_module.start_from_probe
    heads: list[int] = []

    def head_recording(method, prepared, rows, task, seed, probe=None, never_held_out=None):
        heads.append(int(np.asarray(never_held_out).sum()))
        return real_head(method, prepared, rows, task, seed, probe, never_held_out)

    monkeypatch.setattr(finetune_module, "start_from_probe", head_recording)
    pool = pd.read_csv(tiny_root / "data" / "manifest.csv")
    lesions = ["mask_MA", "mask_HE", "mask_EX", "mask_SE"]
    pool.loc[pool.index % 8 != 0, lesions] = np.nan  # one image in eight has lesion masks
    pool_csv = tiny_root / "data" / f"pool-{tmp_path.name}.csv"
    pool.to_csv(pool_csv, index=False)
    pretrain = {"mask": lesions,
                "method": {"name": "segmentation", "patch_size": 32, "patches_per_image": 1},
                "engine": {"max_steps": 1, "batch_size": 4, "checkpoint_every_n_steps": -1, "precision": "32"}}
    config = resolve_config(_config(
        tiny_root, tmp_path / "enc", inits=[{"name": "scratch"}, {"name": "lesions", "pretrain": pretrain}],
        pool={"data": [{"source": "manifest", "manifest": str(pool_csv)}], "detect_duplicates": False},
        tasks=[{"name": "referable", "label": "dr_grade", "positive_from": 2}], protocols=["probe", "finetune"],
        probe={"c_grid": [0.1, 1.0]}, finetune={"epochs": 1, "min_steps": 1, "max_steps": 2, "patience": 0,
                                                  "head_init": "probe"}, finetune_tuning={"grid": {"lr": [0.001]}, "fraction": 1.0, "seeds": [0], "val_fraction": 0.3},
        explain={"tsne": False, "gradcam": 0}), None)
    run = RunDir.create(tmp_path / "runs", "held")
    try:
        run_transfer(config, run)
    finally:
        pool_csv.unlink()
    grid = TransferGrid(config.model_dump(mode="json"), RunDir.resume(run.path))
    encoder = str(grid.model_of(config.inits[1]).init)
    n = int(grid.annotated(encoder).sum())
    assert n > 0
    assert sorted(seen) == sorted([("scratch", 0), ("scratch", 0), (encoder, n), (encoder, n)])  # a tuning run, a cell
    assert sorted(heads) == [0, 0, n, n]  # the LP-FT heads' probes too
    assert any(n > 0 and made for n, made in kept_out)  # the lesion init's probes chose C without validating on its annotated rows
    assert json.loads((run.path / "data" / "never-held-out.json").read_text()) == {
        "never_held_out": {"scratch": 0, "lesions": n}}


@pytest.mark.slow
def test_a_sweep_restored_from_its_archive_resumes_and_never_pretrains_its_encoder_again(
        tiny_root: Path, tmp_path: Path) -> None:
    """A study carried over to another machine as an archive (results, predictions, records; no
    weights): restored, it resumes with the missing cells only; an init it has results of (cells,
    or only its pretraining) whose encoder the archive did not hold is refused, before any work,
    rather than pretrained again."""
    from retinassl.io.archive import archive_run, restore_run

    pool_csv = tiny_root / "data" / f"pool-{tmp_path.name}.csv"  # beside the images its paths name
    pd.read_csv(tiny_root / "data" / "manifest.csv").to_csv(pool_csv, index=False)
    pretrain = {"mask": ["mask_MA", "mask_HE", "mask_EX", "mask_SE"],
                "method": {"name": "segmentation", "patch_size": 32, "patches_per_image": 1},
                "engine": {"max_steps": 2, "batch_size": 4, "checkpoint_every_n_steps": -1, "precision": "32"}}

    def config(seeds):
        return resolve_config(_config(tiny_root, tmp_path / "enc", inits=[{"name": "scratch"},
                                                                          {"name": "lesions", "pretrain": pretrain}],
                                      pool={"data": [{"source": "manifest", "manifest": str(pool_csv)}],
                                            "detect_duplicates": False},
                                      protocols=["probe"], fractions=[1.0], seeds=seeds,
                                      explain={"tsne": False, "gradcam": 0}), None)

    def carried(run: RunDir, machine: str) -> RunDir:
        run.update_status(status="failed")  # stopped (the command records it); a running run is not archived
        archive = archive_run(run.path, tmp_path / "archives", file_name_ids=True)  # a manifest source: ids named
        return RunDir(restore_run(archive, tmp_path / machine))

    try:
        check_carried_runs(config, carried, tmp_path)
    finally:
        pool_csv.unlink()


def check_carried_runs(config, carried, tmp_path: Path) -> None:
    import shutil

    from retinassl.errors import ConfigError

    # pretrained, no cell done yet: the pretraining's rows are results of it too
    early = RunDir.create(tmp_path / "runs", "early")
    TransferGrid(config([0]).model_dump(mode="json"), early).prepare()
    assert not read_results(early.results_file).empty
    with pytest.raises(ConfigError, match=r"lesions: .* has results of it \(rows in results.csv, "
                                          r"pretrain/lesions/results.csv, data/encoders.json\) but not its encoder"):
        run_transfer(config([0]), RunDir.resume(carried(early, "machine1").path))

    first = RunDir.create(tmp_path / "runs", "carried")
    run_transfer(config([0]), first)
    rows = read_results(first.results_file)
    restored = carried(first, "machine2")
    assert not (restored.path / "pretrain" / "lesions" / "encoder").exists()
    with pytest.raises(ConfigError, match="lesions: .* has results of it"):
        run_transfer(config([0, 1]), RunDir.resume(restored.path))
    assert len(read_results(restored.results_file)) == len(rows)         # nothing ran, nothing lost
    # another encoder put in its place: refused, naming it
    torch.manual_seed(99)
    save_encoder(restored.path / "pretrain" / "lesions" / "encoder", build_encoder("convnet", width=8), arch="convnet",
                 kwargs={"width": 8})
    with pytest.raises(ConfigError, match="lesions: the encoder in .* is not the one"):
        run_transfer(config([0, 1]), RunDir.resume(restored.path))
    shutil.rmtree(restored.path / "pretrain" / "lesions" / "encoder")
    # with the same encoder back in place the study continues: only seed 1's cells run
    shutil.copytree(first.path / "pretrain" / "lesions" / "encoder", restored.path / "pretrain" / "lesions" / "encoder")
    run_transfer(config([0, 1]), RunDir.resume(restored.path))
    after = read_results(restored.results_file)
    cells = after[after["metric"] == "n_test"]
    assert sorted(cells["seed"].astype(int)) == [0, 0, 0, 0, 1, 1, 1, 1]   # 2 tasks x 2 inits x 2 seeds, once each
    assert len(rows[rows["metric"] == "n_test"]) == 4
    kept = after.iloc[:len(rows)]
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), rows.reset_index(drop=True))


def _seeds_config(tiny_root: Path, tmp_path: Path, **init) -> dict:
    step = {"method": {"name": "rotation"},
            "engine": {"max_steps": 1, "batch_size": 4, "checkpoint_every_n_steps": -1, "precision": "32"}}
    pool = {"data": [{"source": "manifest", "manifest": str(tiny_root / "data" / "manifest.csv")}],
            "detect_duplicates": False}
    inits = [{"name": "scratch"}, {"name": "rot", "pretrain": step, "pretrain_seeds": [0, 1, 2], **init}]
    return _config(tiny_root, tmp_path / "enc", inits=inits, pool=pool, fractions=[1.0], seeds=[0],
                   protocols=["probe"], explain={"tsne": False, "gradcam": 0})


def test_pretrain_seeds_config_checks(tiny_root: Path, tmp_path: Path) -> None:
    from retinassl.errors import ConfigError

    for bad, match in (({"pretrain_seeds": [0, 0]}, "distinct seeds"),
                       ({"pool": "train"}, "pool 'train' has trained on"),
                       ({"pretrain": {"method": {"name": "rotation"}, "seed": 3}}, "without its own 'seed'")):
        with pytest.raises(ConfigError, match=match):
            resolve_config(_seeds_config(tiny_root, tmp_path, **bad), None)
    with pytest.raises(ConfigError, match="pretrain_seeds"):  # nothing to pretrain
        resolve_config(_config(tiny_root, tmp_path / "enc",
                               inits=[{"name": "scratch"}, {"name": "x", "pretrain_seeds": [0, 1]}]), None)


@pytest.mark.slow
def test_pretrain_seeds_keep_the_encoder_that_validation_prefers(tiny_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``pretrain_seeds``: one pretraining per seed (each with its seed), each encoder scored by a probe on
    training patients held out (never a test image, never a patient on both sides), the best kept as the
    init's encoder and recorded; a resumed sweep neither pretrains nor chooses again."""
    from retinassl.errors import ConfigError
    from retinassl.jobs import pretrain as pretrain_module
    from retinassl.models.initialize import same_weights, weights_identity
    from retinassl.sweeps import transfer_inits
    from retinassl.sweeps.transfer_inits import selection_records

    config = resolve_config(_seeds_config(tiny_root, tmp_path), None)
    seeds_run: list[int] = []
    real_pretrain = pretrain_module.run_pretrain

    def recording(cfg, run, **kwargs):
        seeds_run.append(cfg.seed)
        return real_pretrain(cfg, run, **kwargs)

    holdouts: list[tuple[np.ndarray, np.ndarray]] = []
    real_holdout = transfer_inits.training_holdout

    def holdout(*args, **kwargs):
        holdouts.append(real_holdout(*args, **kwargs))
        return holdouts[-1]

    real_scores = transfer_inits.TransferInits.selection_scores
    scored: dict[str, list[float]] = {}

    def scores(self, encoder_dir, task, holdouts, annotated=None):  # the real probe scores, then seed 1 the best
        values = real_scores(self, encoder_dir, task, holdouts, annotated)
        scored[Path(encoder_dir).parent.name] = values
        return [v + (1.0 if Path(encoder_dir).parent.name == "seed-1" else 0.0) for v in values]

    monkeypatch.setattr(pretrain_module, "run_pretrain", recording)
    monkeypatch.setattr(transfer_inits, "training_holdout", holdout)
    monkeypatch.setattr(transfer_inits.TransferInits, "selection_scores", scores)
    run = RunDir.create(tmp_path / "runs", "seeds")
    run_transfer(config, run)

    assert seeds_run == [0, 1, 2]
    folder = run.path / "pretrain" / "rot"
    identities = {s: weights_identity(str(folder / f"seed-{s}" / "encoder")) for s in (0, 1, 2)}
    assert not same_weights(identities[0], identities[1])  # each seed its own pretraining
    assert same_weights(weights_identity(str(folder / "encoder")), identities[1])  # the kept one, copied
    assert (folder / "manifest.csv").read_bytes() == (folder / "seed-1" / "manifest.csv").read_bytes()
    # real probe scores of each seed on 5 held-out splits, inside the metric's range
    assert set(scored) == {"seed-0", "seed-1", "seed-2"}
    assert all(len(v) == 5 and all(0 <= x <= 1 for x in v) for v in scored.values())
    manifest = Manifest.load(run.path / "data" / "downstream.csv")
    frame = manifest.frame
    test_rows = set(np.flatnonzero(frame["split"].astype(str).to_numpy() == "test"))
    patients = frame["patient"].astype(str).to_numpy()
    assert holdouts and len({tuple(v) for _, v in holdouts}) > 1  # different held-out patients per split
    for fitted, held_out in holdouts:
        assert not (set(fitted) | set(held_out)) & test_rows
        assert not set(patients[fitted]) & set(patients[held_out]) - {""}
        assert not set(fitted) & set(held_out)
    [record] = selection_records(run)
    assert record["chosen"] == 1 and [c["seed"] for c in record["candidates"]] == [0, 1, 2]
    assert record["never_held_out"] == 0  # rotation pretraining reads no label
    assert record["candidates"][1]["mean"] == pytest.approx(np.mean(scored["seed-1"]) + 1.0)
    rows = read_results(run.results_file)
    mine = rows[(rows["init"] == "rot") & (rows["protocol"] == "pretrain")]
    assert dict(zip(mine[mine["metric"] == "selected"]["seed"], mine[mine["metric"] == "selected"]["value"])) == {
        0: 0.0, 1: 1.0, 2: 0.0}
    assert sorted(mine[mine["metric"] == "pretrain_seconds"]["seed"]) == [0, 1, 2]
    assert (mine["metric"] == "selection_seconds").sum() == 1
    # the cells use the kept encoder; a resumed run pretrains and chooses nothing again, also when it was
    # killed after the choice was recorded and before the kept encoder was copied
    import shutil

    shutil.rmtree(folder / "encoder")
    seeds_run.clear()
    scored.clear()
    run_transfer(config, RunDir.resume(run.path))
    assert seeds_run == [] and scored == {}
    assert same_weights(weights_identity(str(folder / "encoder")), identities[1])
    assert selection_records(run) == [record] and len(read_results(run.results_file)) == len(rows)
    grid = TransferGrid(config.model_dump(mode="json"), RunDir.resume(run.path))
    assert grid.model_of(config.inits[1]).init == str(folder / "encoder")
    from retinassl.report.html import build_report

    page = build_report(run).read_text()
    assert "pretraining seeds chosen on validation data" in page and "pretraining seed chosen on validation" in page
    # other seeds than those the run chose among: refused, not mixed
    other = resolve_config(_seeds_config(tiny_root, tmp_path, pretrain_seeds=[0, 1]), None)
    shutil.rmtree(folder / "encoder")
    with pytest.raises(ConfigError, match=r"pretrain_seeds \[0, 1\], but this run chose among seeds \[0, 1, 2\]"):
        run_transfer(other, RunDir.resume(run.path))
    # a choice made before the probe's inner_cv existed (C on folds over the rows) is not reused by a run
    # whose probes choose C on patient folds
    import json

    path = run.path / "data" / "pretrain-selection-rot.json"
    old = json.loads(path.read_text())
    assert old.pop("probe_inner_cv") == "grouped"
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="probe.inner_cv=rows"):
        run_transfer(config, RunDir.resume(run.path))

"""Fine-tuning settings tuned per initialisation on training images only (``finetune_tuning``): the
tuning runs never see a test image, hold out whole patients, choose the best mean validation score,
the cells then train with the choice, and a resumed sweep does not tune again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from retinassl.data.manifest import Manifest
from retinassl.errors import ConfigError
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.models import build_encoder
from retinassl.models.checkpoint import save_encoder
from retinassl.sweeps import transfer_tuning as tuning_module
from retinassl.sweeps.transfer import run_transfer
from retinassl.sweeps.transfer_config import resolve_config, tuning_candidates

GRID = {"max_steps": [2, 3], "lr": [0.001]}


def _config(root: Path, encoder_dir: Path, **extra) -> dict:
    return {
        "kind": "transfer", "name": "tune", "seed": 0,
        "data": {"source": "manifest", "manifest": str(root / "data" / "manifest.csv"),
                 "cache_dir": str(encoder_dir.parent / "cache")},
        "preprocess": {"size": 32},
        "model": {"arch": "convnet", "kwargs": {"width": 8}},
        "inits": [{"name": "scratch"}, {"name": "other", "init": str(encoder_dir)}],
        "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2}],
        "fractions": [1.0], "seeds": [0], "protocols": ["finetune"],
        # epochs large enough that a run always trains for exactly max_steps
        "finetune": {"epochs": 50, "min_steps": 1, "max_steps": 2, "patience": 0},
        "finetune_tuning": {"grid": GRID, "fraction": 1.0, "seeds": [0, 1], "val_fraction": 0.3},
        "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "precision": "32"},
        "explain": {"tsne": False, "gradcam": 0},
        **extra}


def test_candidates_are_every_combination_in_a_fixed_order() -> None:
    assert tuning_candidates({"lr": [1, 2], "augment": ["none", "affine"]}) == [
        {"augment": "none", "lr": 1}, {"augment": "none", "lr": 2},
        {"augment": "affine", "lr": 1}, {"augment": "affine", "lr": 2}]


def test_tuning_config_checks(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown: \\['learning_rate'\\]"):
        resolve_config(_config(tiny_root, tmp_path, finetune_tuning={"grid": {"learning_rate": [0.1]}}), None)
    with pytest.raises(ConfigError, match="not one of the tasks"):
        resolve_config(_config(tiny_root, tmp_path, finetune_tuning={"grid": GRID, "task": "dme"}), None)
    with pytest.raises(ConfigError):                                   # a value FinetuneConfig refuses
        resolve_config(_config(tiny_root, tmp_path, finetune_tuning={"grid": {"lr": [-1.0]}}), None)


@pytest.mark.slow
def test_tuning_uses_training_images_only_and_the_cells_use_the_choice(
        tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    save_encoder(tmp_path / "enc", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    config = resolve_config(_config(tiny_root, tmp_path / "enc"), None)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = tuning_module.finetune

    def recording(model, prepared, train_rows, test_rows, *args, **kwargs):
        seen.append((np.asarray(train_rows), np.asarray(test_rows)))
        return real(model, prepared, train_rows, test_rows, *args, **kwargs)

    monkeypatch.setattr(tuning_module, "finetune", recording)
    run = RunDir.create(tmp_path / "runs", "tune")
    run_transfer(config, run)

    manifest = Manifest.load(run.path / "data" / "downstream.csv")
    frame = manifest.frame
    test_rows = set(np.flatnonzero(frame["split"].astype(str).to_numpy() == "test").tolist())
    assert test_rows                                                    # the fixture has a test split
    patients = frame["patient"].astype(str).to_numpy()
    assert len(seen) == 2 * 2 * 2                                       # inits x candidates x seeds
    for fitted, scored in seen:
        assert not (set(fitted.tolist()) | set(scored.tolist())) & test_rows
        assert not set(patients[fitted]) & set(patients[scored])        # whole patients held out
    table = pd.read_csv(run.path / "data" / "tuning.csv")
    assert len(table) == 8 and set(table["metric"]) == {"auc"}
    results = read_results(run.results_file)
    steps = results[(results["metric"] == "steps") & (results["protocol"] == "finetune")]
    candidates = tuning_candidates(GRID)
    for init in ("scratch", "other"):
        mine = table[table["init"] == init]
        means = [mine.loc[mine["candidate"] == k, "value"].mean() for k in range(len(candidates))]
        expected = candidates[int(np.argmax(means))]                    # the first best on a tie
        record = json.loads((run.path / "data" / f"tuning-{init}.json").read_text())
        assert record["chosen"] == expected
        assert [c["mean"] for c in record["candidates"]] == pytest.approx(means)
        # the cell trained with the chosen number of steps (epochs are large: steps = max_steps)
        assert steps.loc[steps["init"] == init, "value"].tolist() == [expected["max_steps"]]
    assert set(mine["steps"]) == {2, 3}                                 # each candidate ran as set

    # the report shows every candidate's validation score and marks each init's choice
    from retinassl.report.transfer import transfer_tuning_section

    section = transfer_tuning_section(run)
    assert section is not None
    assert section.html.count("<tr>") >= 1 + 2 * len(candidates)
    assert "lr 0.001, max_steps 2" in section.html and "lr 0.001, max_steps 3" in section.html
    assert section.html.count(">yes<") == 2                            # one choice per init

    # a resumed sweep does not tune again
    seen.clear()
    run_transfer(config, RunDir.resume(run.path))
    assert seen == [] and len(pd.read_csv(run.path / "data" / "tuning.csv")) == 8

    # a sweep killed during the tuning resumes with only the missing tuning run
    for path in (run.path / "data").glob("tuning-*.json"):
        path.unlink()
    table.iloc[:-1].to_csv(run.path / "data" / "tuning.csv", index=False)
    run_transfer(config, RunDir.resume(run.path))
    assert len(seen) == 1 and len(pd.read_csv(run.path / "data" / "tuning.csv")) == 8

    # resuming with another grid would mix two tunings: refused, naming what changed
    other = resolve_config(_config(tiny_root, tmp_path / "enc", finetune_tuning={
        "grid": {"max_steps": [2, 4]}, "fraction": 1.0, "seeds": [0, 1], "val_fraction": 0.3}), None)
    with pytest.raises(ConfigError, match="finetune_tuning changed"):
        run_transfer(other, RunDir.resume(run.path))


def test_a_diverging_candidate_scores_nan_and_is_not_chosen(tiny_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from retinassl.errors import TrainingDiverged

    torch.manual_seed(5)
    save_encoder(tmp_path / "enc", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    config = resolve_config(_config(tiny_root, tmp_path / "enc", inits=[{"name": "scratch"}], finetune_tuning={
        "grid": {"lr": [0.001, 0.01]}, "fraction": 1.0, "seeds": [0, 1], "val_fraction": 0.3}), None)
    real = tuning_module.finetune

    def diverges_at_high_lr(model, prepared, train_rows, test_rows, task, settings, *args, **kwargs):
        if settings.lr == 0.01:
            raise TrainingDiverged("loss became NaN")
        return real(model, prepared, train_rows, test_rows, task, settings, *args, **kwargs)

    monkeypatch.setattr(tuning_module, "finetune", diverges_at_high_lr)
    run = RunDir.create(tmp_path / "runs", "tune")
    run_transfer(config, run)
    table = pd.read_csv(run.path / "data" / "tuning.csv")
    assert table.loc[table["candidate"] == 1, "value"].isna().all()
    assert json.loads((run.path / "data" / "tuning-scratch.json").read_text())["chosen"] == {"lr": 0.001}


def test_tuning_is_refused_without_a_test_split(tiny_root: Path, tmp_path: Path) -> None:
    """With k-fold cross-validation every image is some fold's test image: no choice made on
    "training" images would stay clear of them."""
    manifest = Manifest.load(tiny_root / "data" / "manifest.csv")
    frame = manifest.frame.assign(split="")
    (tmp_path / "kfold").mkdir()
    Manifest(frame, manifest.root).save(tmp_path / "kfold" / "manifest.csv")
    data = _config(tiny_root, tmp_path / "enc", inits=[{"name": "scratch"}], folds=2)
    data["data"]["manifest"] = str(tmp_path / "kfold" / "manifest.csv")
    run = RunDir.create(tmp_path / "runs", "tune")
    with pytest.raises(ConfigError, match="needs a downstream set with a test split"):
        run_transfer(resolve_config(data, None), run)


def test_the_tuning_record_refuses_a_resume_with_other_initial_weights(tmp_path: Path) -> None:
    """What the grid's own record does not hold (each init's weights, the tuning task) the tuning
    record does: a resume whose init points at other weights would reuse a choice made for others."""
    config = resolve_config(_config(tmp_path, tmp_path / "enc"), None)
    run = RunDir.create(tmp_path / "runs", "tune")
    tuning_module.check_settings(config, run, {"scratch": "scratch", "other": "a/encoder"})
    tuning_module.check_settings(config, run, {"scratch": "scratch", "other": "a/encoder"})  # the same: accepted
    with pytest.raises(ConfigError, match="inits changed"):
        tuning_module.check_settings(config, run, {"scratch": "scratch", "other": "b/encoder"})


def test_a_tuning_recorded_before_the_probes_inner_cv_resumes_only_with_row_folds(tmp_path: Path) -> None:
    """A tuning whose LP-FT heads chose C on folds over the rows (recorded before ``probe.inner_cv``
    existed) is not resumed into one whose heads choose C on patient folds: its choice would be mixed."""
    import json

    config = resolve_config(_config(tmp_path, tmp_path / "enc"), None)
    run = RunDir.create(tmp_path / "runs", "tune")
    inits = {"scratch": "scratch"}
    tuning_module.check_settings(config, run, inits)
    record = run.path / "data" / "tuning.settings.json"
    recorded = json.loads(record.read_text())
    assert recorded["probe"].pop("inner_cv") == "grouped"
    record.write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match="probe changed"):
        tuning_module.check_settings(config, run, inits)
    rows = config.model_copy(update={"probe": config.probe.model_copy(update={"inner_cv": "rows"})})
    tuning_module.check_settings(rows, run, inits)


def test_the_tuning_record_names_weights_by_content_wherever_they_lie(tmp_path: Path) -> None:
    """A run restored elsewhere with its encoder put back (another path, the same weights) resumes; other
    weights at the same path are refused; a record that held the path (earlier versions) is upgraded."""
    import hashlib
    import shutil

    torch.manual_seed(0)
    save_encoder(tmp_path / "a" / "encoder", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    shutil.copytree(tmp_path / "a" / "encoder", tmp_path / "b" / "encoder")
    weights = (tmp_path / "a" / "encoder" / "model.safetensors").read_bytes()
    digest = hashlib.blake2b(weights, digest_size=16).hexdigest()
    config = resolve_config(_config(tmp_path, tmp_path / "enc"), None)
    run = RunDir.create(tmp_path / "runs", "tune")
    record = run.path / "data" / "tuning.settings.json"
    tuning_module.check_settings(config, run, {"scratch": "scratch", "other": str(tmp_path / "a" / "encoder")})
    assert json.loads(record.read_text())["inits"] == {"scratch": "scratch", "other": f"blake2b:{digest}"}
    tuning_module.check_settings(config, run, {"scratch": "scratch", "other": str(tmp_path / "b" / "encoder")})
    # an earlier version's record (the path): upgraded while the path holds the same weights
    recorded = json.loads(record.read_text())
    old_style = {"scratch": "scratch", "other": str(tmp_path / "a" / "encoder")}
    record.write_text(json.dumps({**recorded, "inits": old_style}))
    tuning_module.check_settings(config, run, {"scratch": "scratch", "other": str(tmp_path / "b" / "encoder")})
    assert json.loads(record.read_text())["inits"]["other"] == f"blake2b:{digest}"
    torch.manual_seed(1)
    save_encoder(tmp_path / "b" / "encoder", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    with pytest.raises(ConfigError, match="inits changed"):
        tuning_module.check_settings(config, run, {"scratch": "scratch", "other": str(tmp_path / "b" / "encoder")})


def test_the_sweep_records_how_many_images_its_fine_tuning_never_holds_out(tiny_root: Path, tmp_path: Path) -> None:
    """Tuning, early stopping and the pretraining-seed choice never hold out an image whose labels or
    masks the init's pretraining read; the sweep records how many per init (``data/never-held-out.json``).
    Refused: a count that changed, and an init whose fine-tuning began before the record existed with
    images to keep out. Accepted: such an init with none, inits added later, resumes with fewer inits."""
    from retinassl.sweeps.transfer import TransferGrid

    config = resolve_config(_config(tiny_root, tmp_path / "enc"), None)
    grid = TransferGrid(config.model_dump(mode="json"), RunDir.create(tmp_path / "runs", "tune"))
    other = str(grid.model_of(config.inits[1]).init)
    none, three = np.zeros(10, dtype=bool), np.r_[np.ones(3, dtype=bool), np.zeros(7, dtype=bool)]
    record = grid.data_dir / "never-held-out.json"
    tuned = grid.data_dir / "tuning.csv"

    def check(rows: np.ndarray, inits: list | None = None) -> None:
        grid._annotated = {"scratch": none, other: rows}
        grid.config = config if inits is None else config.model_copy(update={"inits": inits})
        grid.check_held_out_rule()

    check(three)
    assert json.loads(record.read_text()) == {"never_held_out": {"scratch": 0, "other": 3}}
    check(three)  # the same: accepted
    with pytest.raises(ConfigError, match="other"):
        check(none)
    check(three, inits=config.inits[:1])  # resumed with scratch alone: the other's count is kept
    assert json.loads(record.read_text()) == {"never_held_out": {"scratch": 0, "other": 3}}
    with pytest.raises(ConfigError, match="other"):
        check(none)
    # a run whose fine-tuning began before the record existed
    record.unlink()
    pd.DataFrame([{"init": "other", "candidate": 0, "seed": 0}]).to_csv(tuned, index=False)
    with pytest.raises(ConfigError, match="began when other validation images could be held out"):
        check(three)
    check(none)  # nothing to keep out: the same images were held out then
    record.unlink()
    pd.DataFrame([{"init": "scratch", "candidate": 0, "seed": 0}]).to_csv(tuned, index=False)
    check(three)  # only scratch began: the other init is added, recorded as it comes
    assert json.loads(record.read_text()) == {"never_held_out": {"scratch": 0, "other": 3}}
    # a fine-tuning cell killed under the old rule (its checkpoint, no result) counts as begun
    record.unlink()
    tuned.unlink()
    cell = grid.run.path / "cells" / grid.cell_name({"task": "referable", "init": "other", "protocol": "finetune",
                                                     "fraction": 1.0, "seed": 0, "fold": None})
    (cell / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="other"):
        check(three)

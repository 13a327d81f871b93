"""Issue 21, items 11, 12, 14 and the leftovers: each case a crafted input and the clear error
(file or option named, exit status 2, no traceback, nothing created or changed) or the correct
behaviour.

- 11: ``evaluate probe`` of a pickle ``.pth`` names the option that exists for it;
- 12: thread counts from the free cores, a warning when oversubscribed;
- 14: ``semisup heatmap`` never writes beside the input and reads IDRiD's sibling ground-truth
  folder; ``oct train-seg`` with undefined metrics warns; ``oct thickness`` with no defined A-scan
  lists no ETDRS sector; a failed config check leaves no run directory (evaluate, sweep, train);
- ``--resume`` of a finished sweep / evaluate / train run says so, exits 0, changes nothing;
- ``data prepare`` refuses unknown top-level keys, an ``--out`` directory, ``--out`` = the input CSV;
- ``preprocess.size=8192`` with ``engine.batch_size=64`` is refused before any run directory;
- no YAML of a run directory or config is read with an unbounded loader.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reliability.harness import cli_in_process

SRC = Path(__file__).resolve().parents[2] / "src" / "retinassl"


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# -- 11 ----------------------------------------------------------------------------------------------
def test_evaluate_pickle_message_names_an_existing_option(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    code, out, err = cli_in_process(["evaluate", "probe", str(weights), "--runs-dir", str(tmp_path / "runs")],
                                    capsys)
    assert code == 2 and str(weights) in err and "model.allow_pickle=true" in err, err
    _no_traceback(err)


# -- 12 ----------------------------------------------------------------------------------------------
def test_threads_from_free_cores(caplog) -> None:
    from retinassl.engine.threads import choose_threads

    with caplog.at_level(logging.WARNING, logger="retinassl"):
        assert choose_threads(0, n_cores=2, load=0.0) == 2
        assert choose_threads(0, n_cores=2, load=1.0) == 1   # another training holds one core
        assert choose_threads(0, n_cores=8, load=2.6) == 5
        assert "oversubscribed" not in caplog.text
        assert choose_threads(0, n_cores=2, load=2.0) == 1   # at least one, and said so
        assert "oversubscribed" in caplog.text
        caplog.clear()
        assert choose_threads(2, n_cores=2, load=1.0) == 2   # as asked, with the warning
        assert "engine.num_threads" in caplog.text


# -- 14: semisup heatmap -------------------------------------------------------------------------
def _classifier(folder: Path) -> Path:
    from retinassl.models import build_encoder
    from retinassl.models.patch_classifier import PatchClassifier

    torch.manual_seed(0)
    encoder = build_encoder("convnet", width=4)
    classifier = PatchClassifier(encoder, torch.nn.Linear(encoder.num_features, 1), "unit", 32, 2)
    return classifier.save(folder, arch="convnet", kwargs={"width": 4}, method="supervised",
                           preprocess={"size": 64})


def test_heatmap_writes_nowhere_near_the_data_and_reads_idrid_masks(tmp_path: Path, capsys, monkeypatch) -> None:
    # IDRiD's layout: images and ground truth in sibling folders
    images = tmp_path / "A. Segmentation" / "1. Original Images" / "a. Training Set"
    truth = tmp_path / "A. Segmentation" / "2. All Segmentation Groundtruths" / "a. Training Set" / "3. Hard Exudates"
    images.mkdir(parents=True)
    truth.mkdir(parents=True)
    yy, xx = np.mgrid[:64, :64]
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[(yy - 32) ** 2 + (xx - 32) ** 2 < 30 ** 2] = (30, 60, 160)
    cv2.imwrite(str(images / "IDRiD_01.jpg"), photo)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:26, 30:36] = 255
    cv2.imwrite(str(truth / "IDRiD_01_EX.tif"), mask)
    model = _classifier(tmp_path / "model")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    before = sorted(p.name for p in images.iterdir())
    code, out, err = cli_in_process(["semisup", "heatmap", str(images / "IDRiD_01.jpg"), "--checkpoint",
                                     str(model), "--mask", str(truth / "IDRiD_01_EX.tif")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in images.iterdir()) == before  # nothing written beside the data
    assert sorted(p.name for p in truth.iterdir()) == ["IDRiD_01_EX.tif"]
    written = work / "runs" / "heatmaps" / "IDRiD_01-heatmap.png"
    assert written.is_file() and f"heatmap: runs/heatmaps/IDRiD_01-heatmap.png" in out
    code, out, err = cli_in_process(["semisup", "heatmap", str(images / "IDRiD_01.jpg"), "--checkpoint",
                                     str(model), "--mask", str(truth / "missing_EX.tif")], capsys)
    assert code == 2 and "missing_EX.tif" in err
    _no_traceback(err)


# -- 14: OCT -------------------------------------------------------------------------------------------
def test_layer_training_with_undefined_metrics_warns() -> None:
    from retinassl.jobs.oct_layers import undefined_warning

    nan = float("nan")
    message = undefined_warning({"dice_ILM-BM": nan, "dice_layers": nan, "boundary_error_um_ILM": nan,
                                 "boundary_error_um": nan, "undefined_fraction": 1.0, "bscans": 4.0})
    assert message and "no boundary" in message and "engine.max_epochs" in message and "100%" in message
    assert undefined_warning({"dice_layers": 0.8, "boundary_error_um": 3.0, "undefined_fraction": 0.0}) is None


def test_thickness_without_any_defined_ascan_lists_no_sector(monkeypatch) -> None:
    from retinassl.jobs.oct_thickness import compute_thickness
    from retinassl.oct.synthetic import synthetic_volumes

    monkeypatch.setenv("RETINASSL_PATIENT_SALT", "tests")
    volume = synthetic_volumes(1, 3, (5, 96, 64), fundus_size=128, ir_size=64)[0]
    defined = compute_thickness(volume)
    assert defined.etdrs is not None and np.isfinite(defined.etdrs["mean_um"]).any()
    # boundaries found, but Bruch's membrane above the ILM on every A-scan: no thickness anywhere
    volume.layers = {**volume.layers, "BM": volume.layers["ILM"] - 1.0}
    empty = compute_thickness(volume)
    assert empty.etdrs is None
    assert any("no ETDRS table" in w for w in empty.warnings)


# -- 14: a failed config check leaves no run directory --------------------------------------------
@pytest.mark.parametrize("args", [
    ["evaluate", "probe", "scratch", "transfer-demo", "fractions=oops"],
    ["sweep", "transfer-demo", "kind=nonsense", "--budget", "smoke"],
    ["sweep", "transfer-demo", "engine.batch_size=-3", "--budget", "smoke"],
    ["train", "demo", "engine.batch_size=-3"],
    ["train", "demo", "preprocess.size=8192", "engine.batch_size=64"],
    ["pretrain", "rotation", "preprocess.size=8192", "engine.batch_size=64"],
    ["sweep", "transfer-demo", "preprocess.size=8192", "engine.batch_size=64", "--budget", "cpu"],
    ["evaluate", "probe", "scratch", "preprocess.size=8192", "engine.batch_size=64"],
])
def test_failed_config_check_leaves_no_run_directory(args: list[str], tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RETINASSL_ALLOW_LARGE", raising=False)
    runs = tmp_path / "runs"
    code, out, err = cli_in_process(args + ["--runs-dir", str(runs)], capsys)
    assert code == 2, (out, err)
    _no_traceback(err)
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    if "preprocess.size=8192" in args:
        assert "engine.batch_size" in err and "preprocess.size" in err


# -- --resume of a finished run ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["sweep", "evaluate", "train"])
def test_resume_of_a_finished_run_changes_nothing(command: str, tmp_path: Path, capsys, monkeypatch) -> None:
    from retinassl.config import read_yaml

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "finished-run"
    run.mkdir(parents=True)
    status = {"status": "finished", "name": "x", "metrics": {"auc": 0.75}}
    (run / "run.json").write_text(json.dumps(status))
    (run / "results.csv").write_text("metric,value\nauc,0.75\n")
    import yaml

    (run / "sweep.yaml").write_text(yaml.safe_dump(read_yaml("transfer-demo")))
    (run / "evaluate.yaml").write_text(yaml.safe_dump(read_yaml("transfer-demo")))
    (run / "config.yaml").write_text(yaml.safe_dump(read_yaml("demo")))
    snapshot = {p.name: p.read_bytes() for p in run.iterdir()}
    args = {"sweep": ["sweep", "--resume", str(run)], "evaluate": ["evaluate", "probe", "scratch", "--resume", str(run)],
            "train": ["train", "--resume", str(run)]}[command]
    code, out, err = cli_in_process(args, capsys)
    assert code == 0 and "has finished; nothing to resume" in out, (out, err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == snapshot


# -- data prepare ----------------------------------------------------------------------------------
def test_data_prepare_refuses_unknown_keys_and_bad_out(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((40, 40, 3), 90, np.uint8))
    csv = tmp_path / "in.csv"
    csv.write_text("id,image,patient,eye,split\na,a.png,p,R,train\n")
    original = csv.read_bytes()
    good = tmp_path / "good.yaml"
    good.write_text(f"data: {{source: manifest, manifest: {csv}}}\npreprocess: {{size: 32}}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text(good.read_text() + "preprocesss: {size: 64}\n")
    code, out, err = cli_in_process(["data", "prepare", str(typo), "--out", str(tmp_path / "m.csv")], capsys)
    assert code == 2 and str(typo) in err and "preprocesss" in err, err
    code, out, err = cli_in_process(["data", "prepare", str(good), "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err and str(tmp_path) in err, err
    code, out, err = cli_in_process(["data", "prepare", str(good), "--out", str(csv)], capsys)
    assert code == 2 and "input CSV" in err, err
    assert csv.read_bytes() == original
    assert not (tmp_path / "m.csv").exists()
    for e in (err,):
        _no_traceback(e)
    code, out, err = cli_in_process(["data", "prepare", str(good), "--out", str(tmp_path / "m.csv")], capsys)
    assert code == 0 and (tmp_path / "m.csv").is_file(), err


# -- bounded YAML everywhere ---------------------------------------------------------------------
def test_no_unbounded_yaml_loading() -> None:
    """Every YAML the toolkit reads goes through retinassl.config's bounded loader (alias bombs)."""
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"yaml\.(safe_load|load|full_load|unsafe_load)\(", line)]
    assert not offenders, offenders


def test_ssl_gan_report_refuses_an_alias_bomb(tmp_path: Path) -> None:
    from retinassl.errors import ConfigError
    from retinassl.io.rundir import RunDir
    from retinassl.report.ssl_gan import ssl_gan_section

    run = tmp_path / "run"
    (run / "predictions" / "ssl-gan").mkdir(parents=True)
    (run / "results.csv").write_text("experiment,task,method,init,protocol,n_labelled,seed,metric,value\n")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    (run / "config.yaml").write_text(bomb)
    with pytest.raises(ConfigError, match="alias"):
        ssl_gan_section(RunDir(run))


def test_a_resumed_run_keeps_the_thread_count_it_started_with(monkeypatch) -> None:
    """Float sums depend on the intra-op thread count: with num_threads 0 a resumed run reuses the
    count recorded when the run started, whatever the load now; an explicit count still wins."""
    import torch
    from retinassl.engine import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "other_load", lambda: 5.0)      # a busy machine now: 1 thread
    try:
        assert threads.choose_threads(0, n_cores=2) == 1
        assert threads.apply_threads(0, recorded=2) == 2 and torch.get_num_threads() == 2
        assert threads.apply_threads(1, recorded=2) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

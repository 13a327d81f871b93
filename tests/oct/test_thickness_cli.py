"""``retinassl oct thickness|segment|info`` end to end: on a DICOM export written by the test (with
known patient identifiers that must appear nowhere in the run directory or the command's output), on
the HEYEX .vol fixture (with a layer model) and on the XML fixture (its own annotations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset
from typer.testing import CliRunner

from retinassl.cli import app
from retinassl.oct.identity import SALT_ENV


def _only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def _assert_outputs(run: Path, etdrs: bool = True) -> dict:
    for name in ("thickness_map.npy", "thickness_map.png", "thickness.json",
                 "thickness_ascans.npy", "boundaries.npy", "run.json") + (("etdrs.csv",) if etdrs else ()):
        assert (run / name).is_file(), name
    m = np.load(run / "thickness_map.npy")
    assert m.shape == (128, 128) and m.dtype == np.float32 and np.isfinite(m).all() and (m >= 0).all()
    if etdrs:
        table = pd.read_csv(run / "etdrs.csv")
        assert list(table["sector"]) == ["C0", "S1", "N1", "I1", "T1", "S2", "N2", "I2", "T2"]
    else:  # an empty map (no A-scan with a defined thickness) lists no sector (issue 21)
        assert not (run / "etdrs.csv").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    return json.loads((run / "thickness.json").read_text())


@pytest.mark.slow
def test_dicom_end_to_end_leaks_no_identifier(tmp_path, dicom_export, tiny_layer_model,
                                              identifying_strings):
    folder, volume, truth = dicom_export
    model_dir, _ = tiny_layer_model
    runs = tmp_path / "runs"
    env = {**os.environ, SALT_ENV: "retinassl-tests", "RETINASSL_PROGRESS": "0"}
    cmd = [sys.executable, "-c", "from retinassl.cli import main; main()"]
    outputs = []
    for args in (["oct", "info", str(folder / "oct.dcm")],
                 ["oct", "thickness", str(folder / "oct.dcm"), "--model", str(model_dir),
                  "--runs-dir", str(runs)],
                 ["-v", "oct", "segment", str(folder), "--model", str(model_dir), "--runs-dir",
                  str(runs / "seg")]):
        done = subprocess.run(cmd + args, capture_output=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        outputs.append(("output of " + " ".join(args[:2]), done.stdout + done.stderr))
    run = [p for p in runs.iterdir() if p.name.startswith("oct-thickness")][0]
    meta = _assert_outputs(run)
    assert meta["volume"]["format"] == "dicom" and meta["map"]["registered_to_localizer"]
    assert meta["volume"]["patient_key"].startswith("pk-")
    # the thickness map from the model agrees with the generator's exact map (a tiny model: loose)
    m = np.load(run / "thickness_map.npy")
    ref = truth.thickness_map
    both = (m > 0) & (ref > 0)
    assert both.sum() > 0.9 * (ref > 0).sum()
    assert np.abs(m[both] - ref[both]).mean() < 25.0
    # no identifier in any byte of any file written, in any log, or in anything printed
    for path in sorted(p for p in runs.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for text in identifying_strings:
            for encoded in {text.encode(), text.upper().encode(), text.lower().encode(),
                            text.encode("utf-16-le")}:
                assert encoded not in data, f"{text!r} found in {path}"
        for text in identifying_strings:
            assert text not in path.name
    for where, data in outputs:
        for text in identifying_strings:
            assert text.encode() not in data, f"{text!r} in the {where}"


def test_vol_fixture_with_a_model(tmp_path, tiny_layer_model):
    path = shared_dataset("oct_format_fixtures_eyepy") / "heyex_vol" / "test_volume.vol"
    model_dir, _ = tiny_layer_model
    result = CliRunner().invoke(app, ["oct", "thickness", str(path), "--model", str(model_dir),
                                      "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path)
    # the tiny model finds no retina on this fixture's 50-pixel-deep B-scans: an empty map
    meta = _assert_outputs(run, etdrs=False)
    assert any("no ETDRS table" in w for w in meta["warnings"])
    assert meta["volume"]["format"] == "heyex-vol" and meta["boundary_source"] == "model"
    # the fixture's positions assume a 768-pixel SLO but its SLO has 50: said, not hidden
    assert not meta["map"]["registered_to_localizer"]
    assert any("outside the infrared image" in w for w in meta["warnings"])


def test_xml_fixture_uses_its_own_segmentation(tmp_path):
    path = shared_dataset("oct_format_fixtures_eyepy") / "heyex_xml" / "test_volume" / "test_dummy.xml"
    result = CliRunner().invoke(app, ["oct", "thickness", str(path), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path)
    meta = _assert_outputs(run)
    assert meta["boundary_source"] == "annotations"
    # ILM at row 9.6 and BM at 30.2 on every annotated A-scan: (30.2 - 9.6) x 3.872 um
    t = np.load(run / "thickness_ascans.npy")
    np.testing.assert_allclose(t[np.isfinite(t)], 20.6 * 3.872, rtol=1e-5)
    m = np.load(run / "thickness_map.npy")
    np.testing.assert_allclose(m[m > 0], 20.6 * 3.872, rtol=1e-5)


def test_no_segmentation_is_a_clear_error(tmp_path, dicom_export):
    folder, _, _ = dicom_export
    result = CliRunner().invoke(app, ["oct", "thickness", str(folder / "oct.dcm"), "--runs-dir",
                                      str(tmp_path)])
    assert result.exit_code != 0
    assert "no layer segmentation" in str(result.exception) and "oct.dcm" in str(result.exception)


@pytest.mark.slow
def test_train_seg_and_pretrain_commands(tmp_path):
    """The two training commands end to end with tiny settings: they leave a model / an encoder."""
    from retinassl.models.checkpoint import load_encoder
    from retinassl.methods.oct_layers import load_layer_model

    engine = ["engine.max_steps=3", "engine.max_epochs=3", "engine.batch_size=4",
              "engine.checkpoint_every_n_steps=-1", "engine.precision=32"]
    result = CliRunner().invoke(app, [
        "oct", "train-seg", "--runs-dir", str(tmp_path / "seg"), "synthetic.n_volumes=3",
        "synthetic.shape=[5,48,32]", "input_size=[32,32]", "val_fraction=0.34",
        "model.kwargs.channels=[4,8]", *engine])
    assert result.exit_code == 0, result.output
    model_dir = _only_run(tmp_path / "seg") / "layer-model"
    assert load_layer_model(model_dir).boundaries == ("ILM", "BM")
    result = CliRunner().invoke(app, [
        "oct", "pretrain", "--runs-dir", str(tmp_path / "cm"), "data.options.n_images=10",
        "data.options.size=64", "data.options.oct_shape=[5,48,32]", "data.options.ir_size=32",
        f"data.cache_dir={tmp_path / 'cache'}", "preprocess.size=32", "model.arch=unet",
        "model.kwargs.channels=[4,8]", "predictions=0", *engine])
    assert result.exit_code == 0, result.output
    encoder, meta = load_encoder(_only_run(tmp_path / "cm") / "encoder")
    assert meta["method"] == "cross-modal" and meta["maps"] == "manifest" and encoder.in_channels == 3
    # --resume with a first argument that is an override (not a config): the override applies
    run = _only_run(tmp_path / "cm")
    assert json.loads((run / "run.json").read_text())["metrics"]["train_batches"] == 3
    result = CliRunner().invoke(app, ["oct", "pretrain", "engine.max_steps=5", "--resume", str(run),
                                      "engine.max_epochs=5"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["metrics"]["train_batches"] == 5

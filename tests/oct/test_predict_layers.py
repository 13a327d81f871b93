"""`retinassl predict` with an OCT layer model: applied to the training run's own validation volumes
(written out as ordinary stack exports), it gives exactly the boundaries the run scored, so the
boundary errors recomputed here from its files equal the run's recorded validation metrics; the
thickness files are BM - ILM times the axial spacing; exports named after a patient name no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinassl.errors import DataError
from retinassl.io.results import read_results
from retinassl.jobs.oct_layers import split_volumes
from retinassl.jobs.predict_oct import predict_layers

PRIVATE = "Doe_Jane_19230405"


def _export(volume, folder: Path, name: str) -> Path:
    """A volume as a .npy stack with its spacing sidecar (an ordinary export)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", volume.bscans)
    (folder / f"{name}.json").write_text(json.dumps({"spacing_mm": list(volume.spacing_mm)}))
    return folder / f"{name}.npy"


def test_predict_reproduces_the_runs_validation_boundaries(tmp_path: Path, tiny_volumes, tiny_layer_model) -> None:
    model_dir, model = tiny_layer_model
    _, val = split_volumes(5, 0.2, 0)                 # the fixture's run: 5 volumes, seed 0, 20 % validation
    volumes = [tiny_volumes[int(i)][0] for i in val]
    files = [_export(v, tmp_path / PRIVATE, f"{PRIVATE}_OD_{k}") for k, v in enumerate(volumes)]
    path = predict_layers(model_dir, files, tmp_path / "out")
    table = pd.read_csv(path)
    assert len(table) == sum(v.shape[0] for v in volumes)
    assert not any(PRIVATE in p.name for p in (tmp_path / "out").iterdir()) and PRIVATE not in path.read_text()
    errors = {name: [] for name in model.boundaries}
    for volume, ident in zip(volumes, table["id"].unique()):
        stack = np.load(tmp_path / "out" / f"{ident}-boundaries.npy")
        segmented = model.segment(volume)                 # what the run's validation scored
        np.testing.assert_array_equal(stack, np.stack([segmented[n] for n in model.boundaries]))
        axial_um = volume.spacing_mm[1] * 1000
        for k, name in enumerate(model.boundaries):
            truth = volume.layers[name]
            both = np.isfinite(stack[k]) & np.isfinite(truth)
            errors[name].append(np.abs(stack[k] - truth)[both] * axial_um)
        thickness = np.load(tmp_path / "out" / f"{ident}-thickness.npy")
        expected = (stack[-1].astype(float) - stack[0]) * axial_um
        np.testing.assert_allclose(thickness, np.where(expected >= 0, expected, np.nan), rtol=1e-5)
        rows = table[table["id"] == ident]
        np.testing.assert_allclose(rows["mean_thickness"], np.nanmean(thickness, axis=1), rtol=1e-5)
        assert (rows["thickness_unit"] == "um").all() and rows["bscan"].tolist() == list(range(volume.shape[0]))
    recorded = read_results(model_dir.parent / "results.csv")
    recorded = dict(zip(recorded["metric"], recorded["value"]))
    for name in model.boundaries:
        mine = np.concatenate(errors[name])
        assert mine.size > 0
        assert mine.mean() == pytest.approx(recorded[f"boundary_error_um_{name}"], rel=1e-5)


@pytest.mark.slow
def test_predict_command_with_a_run_directory_and_a_bad_export(tmp_path: Path, tiny_volumes,
                                                               tiny_layer_model) -> None:
    model_dir, _ = tiny_layer_model
    good = _export(tiny_volumes[5][0], tmp_path / PRIVATE, f"{PRIVATE}_OS")
    bad = tmp_path / PRIVATE / f"{PRIVATE}_OD.npy"
    bad.write_bytes(b"not a stack")
    env = {**os.environ, "RETINASSL_CACHE": str(tmp_path / "cache")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from retinassl.cli import main; main()", "predict",
                               str(model_dir.parent), *args], capture_output=True, text=True, env=env,
                              timeout=300)

    stopped = run(str(good), str(bad), "--out", str(tmp_path / "a"))
    assert stopped.returncode == 2 and "vol-" in stopped.stderr and PRIVATE not in stopped.stderr
    assert not (tmp_path / "a" / "predictions.csv").exists()
    done = run(str(tmp_path / PRIVATE / "*.npy"), "--out", str(tmp_path / "b"), "--skip-bad")
    assert done.returncode == 0, done.stderr[-2000:]
    assert PRIVATE not in done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "b" / "predictions.csv")
    assert table["problem"].notna().sum() == 1 and len(table) == tiny_volumes[5][0].shape[0] + 1
    with pytest.raises(DataError, match="vol-"):
        predict_layers(model_dir, [bad], tmp_path / "c")

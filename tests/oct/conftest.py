"""Shared OCT test fixtures: a fixed patient salt (no salt file is written), tiny synthetic volumes,
a DICOM export written from one of them, and a tiny layer-segmentation model trained once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retinassl.oct.identity import SALT_ENV

TINY = (9, 96, 64)
IDENTIFIERS = {"PatientName": "Zyxwvut^Qwertina", "PatientID": "ID-98765-XQ",
               "PatientBirthDate": "19230405", "AccessionNumber": "ACC5551212",
               "InstitutionName": "Xylophone Eye Clinic", "ReferringPhysicianName": "Vwxyz^Doctora"}
# every string that would reveal the patient if it appeared in an output or a log
IDENTIFYING_STRINGS = ("Zyxwvut", "Qwertina", "98765", "19230405", "1923-04-05", "ACC5551212",
                       "Xylophone", "Vwxyz", "Doctora")


@pytest.fixture(autouse=True)
def _patient_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, "retinassl-tests")


@pytest.fixture(scope="session")
def tiny_volumes():
    """Six tiny synthetic volumes with their exact truth: [(OCTVolume, SyntheticOCT)]."""
    from retinassl.oct.synthetic import synthetic_volumes

    return synthetic_volumes(6, 0, TINY, fundus_size=128, ir_size=64, with_truth=True)


@pytest.fixture(scope="session")
def tiny_layer_model(tmp_path_factory: pytest.TempPathFactory, tiny_volumes):
    """An ILM/BM U-Net trained for 80 steps on four tiny volumes (validated on a fifth), about 10 s;
    its maps are within ~10 micrometres of the truth."""
    from retinassl.config import validate
    from retinassl.methods.oct_layers import load_layer_model
    from retinassl.jobs.oct_layers import LayerTrainConfig, run_train_layers
    from retinassl.io.rundir import RunDir

    root = tmp_path_factory.mktemp("layer-model")
    cfg = validate(LayerTrainConfig, {
        "runs_dir": str(root), "input_size": [64, 64],
        "model": {"arch": "unet", "kwargs": {"in_channels": 1, "channels": [8, 16, 32]}},
        "engine": {"max_epochs": 100, "max_steps": 80, "batch_size": 8, "precision": "32",
                   "checkpoint_every_n_steps": -1, "num_threads": 1},
        "method": {"name": "oct-layers", "lr": 0.01}})
    run = RunDir.create(cfg.runs_dir, "tiny")
    run_train_layers(cfg, run, [v for v, _ in tiny_volumes[:5]])
    return run.path / "layer-model", load_layer_model(run.path / "layer-model")


@pytest.fixture()
def dicom_export(tmp_path: Path, tiny_volumes) -> tuple[Path, object, object]:
    """The last tiny volume written as oct.dcm + ir.dcm with known identifiers:
    (folder, volume, truth)."""
    from retinassl.oct.dicom_write import write_oct_dicom

    volume, truth = tiny_volumes[5]
    folder = tmp_path / "export"
    write_oct_dicom(folder, volume, identifiers=IDENTIFIERS)
    return folder, volume, truth


@pytest.fixture()
def identifying_strings() -> tuple[str, ...]:
    """Every string that would reveal the patient of :func:`dicom_export` (names, ID, birth date,
    accession number, institution)."""
    return IDENTIFYING_STRINGS


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

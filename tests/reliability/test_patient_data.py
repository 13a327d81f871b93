"""Patient identifiers never reach outputs: DICOM exports carrying a known patient name, ID, birth date,
accession number, institution and referring physician (and a file name made of the patient's name and
ID, as exports often are) go through the OCT pipeline end to end on the real command line
(``oct train-seg`` -> ``oct info`` -> ``oct thickness --model``, and a failing ``oct thickness``), and
every byte of every run directory, of the cache and of the captured output is searched for each
identifier as UTF-8, UTF-16 (LE/BE), hex (lower/upper case) and in file names.

The OCT tests' fixtures define the identifiers (tests/oct/conftest.py); they are repeated here so
that this test runs on its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import run_cli

IDENTIFIERS = {"PatientName": "Zyxwvut^Qwertina", "PatientID": "ID-98765-XQ",
               "PatientBirthDate": "19230405", "AccessionNumber": "ACC5551212",
               "InstitutionName": "Xylophone Eye Clinic", "ReferringPhysicianName": "Vwxyz^Doctora"}
NEEDLES = ("Zyxwvut", "Qwertina", "98765", "19230405", "1923-04-05", "ACC5551212", "Xylophone",
           "Vwxyz", "Doctora")


def forms(needle: str) -> list[bytes]:
    raw = needle.encode()
    return [raw, needle.encode("utf-16-le"), needle.encode("utf-16-be"), raw.hex().encode(),
            raw.hex().upper().encode(), needle.lower().encode(), needle.upper().encode()]


def find_identifiers(blobs: dict[str, bytes]) -> list[str]:
    hits = []
    for where, data in blobs.items():
        for needle in NEEDLES:
            for form in forms(needle):
                if form in data:
                    hits.append(f"{needle!r} ({form[:24]!r}) in {where}")
            if needle.lower() in where.lower():
                hits.append(f"{needle!r} in the file name {where}")
    return hits


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


@pytest.mark.slow
def test_oct_pipeline_leaks_no_identifier(tmp_path: Path) -> None:
    pytest.importorskip("retinassl.oct.dicom_write")
    from retinassl.oct.dicom_write import write_oct_dicom
    from retinassl.oct.synthetic import synthetic_volumes

    volumes = synthetic_volumes(2, 11, (9, 96, 64), fundus_size=128, ir_size=64)
    export = tmp_path / "export"
    oct_path, _ = write_oct_dicom(export, volumes[0], identifiers=IDENTIFIERS)
    named = oct_path.with_name("Zyxwvut_Qwertina_ID-98765-XQ_OD.dcm")  # exports are often named so
    oct_path.rename(named)
    assert IDENTIFIERS["PatientName"].encode() in named.read_bytes()  # the test data does carry them
    # a second export without annotations for the failing path
    bare_path, _ = write_oct_dicom(tmp_path / "export2", volumes[1], identifiers=IDENTIFIERS)
    outputs: dict[str, bytes] = {}

    def run(args: list[str], expect: int = 0) -> None:
        proc = run_cli(args, tmp_path, wrapper=False)
        assert proc.returncode == expect, proc.stderr[-3000:]
        outputs[f"stdout of {args[:2]}"] = proc.stdout.encode()
        if expect == 0:
            outputs[f"stderr of {args[:2]}"] = proc.stderr.encode()

    seg = tmp_path / "seg.yaml"
    seg.write_text("name: layers\ninput_size: [64, 64]\nsynthetic: {n_volumes: 3, seed: 1, shape: [5, 96, 64]}\n"
                   "model: {arch: unet, kwargs: {in_channels: 1, channels: [4, 8]}}\n"
                   "engine: {max_epochs: 100, max_steps: 6, batch_size: 8, precision: '32', "
                   "checkpoint_every_n_steps: 3, num_threads: 1}\n")
    run(["oct", "train-seg", str(seg), "--runs-dir", str(tmp_path / "runs")])
    model = next((tmp_path / "runs").glob("layers-*/layer-model"))
    run(["oct", "info", str(named)])
    run(["oct", "thickness", str(named), "--model", str(model), "--runs-dir", str(tmp_path / "runs")])
    thickness_runs = list((tmp_path / "runs").glob("oct-thickness-*"))
    assert thickness_runs and (thickness_runs[0] / "thickness_map.npy").is_file()
    # a failure (no layer annotations, no model) still writes its run directory: it must not leak
    run(["oct", "thickness", str(bare_path.rename(bare_path.with_name("Vwxyz_Doctora_ACC5551212.dcm"))),
         "--runs-dir", str(tmp_path / "runs")], expect=2)
    blobs = {**tree(tmp_path / "runs"), **tree(tmp_path / "cache"), **outputs}
    assert any("thickness.json" in k for k in blobs)
    hits = find_identifiers(blobs)
    assert not hits, "\n".join(hits)

"""Patient names in FILE and FOLDER names never reach outputs (issue 21, item 2).

Exports are often named after the patient (``Zyxwvut_Qwertina_ID-98765-XQ/..._OD.dcm``). Every OCT
command -- ``oct info``, ``segment``, ``thickness``, ``train-seg`` (volume paths written by the user
in its config), ``pretrain`` (a manifest whose ids and paths carry the name; ``maps=segment`` on a
manifest with only ``oct_volume``, item 3) and failing variants of each (a corrupt DICOM under a
patient-named file) -- runs on the real command line; every file of every run directory (run.json,
config.yaml, logs/log.txt, metrics.csv, TensorBoard events, report/index.html and figure names), the
cache (its index and entries) and the captured output of successful commands is searched for each
identifier in several encodings and in file names: zero hits. A failing command may name the file
on the terminal (the user must find it); its run directory may not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reliability.harness import run_cli
from reliability.test_patient_data import IDENTIFIERS, find_identifiers, tree

FOLDER = "Zyxwvut_Qwertina_ID-98765-XQ"


def _png(path: Path, array: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _stack(folder: Path, volume) -> Path:
    """A ``.npy`` stack with a sidecar giving its ILM/BM rows, named after the patient."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Zyxwvut_Qwertina_98765_OD.npy"
    np.save(path, volume.bscans)
    np.save(folder / "Zyxwvut_bounds.npy", np.stack([volume.layers["ILM"], volume.layers["BM"]]))
    (folder / "Zyxwvut_Qwertina_98765_OD.json").write_text(json.dumps({
        "spacing_mm": list(volume.spacing_mm), "boundaries": "Zyxwvut_bounds.npy",
        "boundary_names": ["ILM", "BM"], "patient_id": IDENTIFIERS["PatientID"]}))
    return path


@pytest.mark.slow
def test_patient_named_files_leave_no_trace(tmp_path: Path) -> None:
    from retinassl.oct.dicom_write import write_oct_dicom
    from retinassl.oct.synthetic import synthetic_volumes

    volumes = synthetic_volumes(5, 11, (9, 96, 64), fundus_size=128, ir_size=64)
    data = tmp_path / "data"
    stacks, dicoms, rows = [], [], []
    for k, volume in enumerate(volumes):
        folder = data / f"{FOLDER}_{k}"
        stacks.append(_stack(folder, volume))
        oct_path, _ = write_oct_dicom(folder / "dicom", volume, identifiers=IDENTIFIERS)
        named = oct_path.rename(oct_path.with_name("Zyxwvut_Qwertina_ID-98765-XQ_OD.dcm"))
        dicoms.append(named)
        ir = _png(folder / "Zyxwvut_Qwertina_98765_ir.png", volume.localizer)
        split = ("train", "train", "train", "val", "test")[k]
        ir, named_rel = ir.relative_to(tmp_path), named.relative_to(tmp_path)  # relative to the CSV
        rows.append(f"Zyxwvut_Qwertina_{k},{ir},p{k},{'RL'[k % 2]},{split},{ir},{named_rel}")
    corrupt_folder = data / "Vwxyz_Doctora_ACC5551212"
    corrupt_folder.mkdir()
    corrupt = corrupt_folder / "Vwxyz_Doctora_ACC5551212_OD.dcm"
    corrupt.write_bytes(dicoms[0].read_bytes()[:3000])  # a truncated export
    manifest = tmp_path / "pairs.csv"
    header = "id,image,patient,eye,split,ir_image,oct_volume\n"
    manifest.write_text(header + "\n".join(rows) + "\n")
    bad_manifest = tmp_path / "bad_pairs.csv"
    bad_manifest.write_text(header + "\n".join(rows[:-1] + [rows[-1].replace(str(dicoms[-1].relative_to(tmp_path)), str(corrupt.relative_to(tmp_path)))])
                            + "\n")
    runs = tmp_path / "runs"
    outputs: dict[str, bytes] = {}

    def run(args: list[str], expect: int = 0) -> None:
        proc = run_cli(args, tmp_path, wrapper=False)
        assert proc.returncode == expect, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        outputs[f"stdout of {args[:2]} #{len(outputs)}"] = proc.stdout.encode()
        if expect == 0:
            outputs[f"stderr of {args[:2]} #{len(outputs)}"] = proc.stderr.encode()
        else:
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    engine = ("engine: {max_epochs: 100, max_steps: 4, batch_size: 8, precision: '32', "
              "checkpoint_every_n_steps: 2, num_threads: 1}\n")
    seg = tmp_path / "seg.yaml"
    seg.write_text("name: layers\ninput_size: [64, 64]\nvolumes: [" + ", ".join(map(str, stacks)) + "]\n"
                   "model: {arch: unet, kwargs: {in_channels: 1, channels: [4, 8]}}\n" + engine)
    run(["oct", "train-seg", str(seg), "--runs-dir", str(runs)])
    model = next(runs.glob("layers-*/layer-model"))
    config_yaml = next(runs.glob("layers-*/config.yaml")).read_text()
    assert config_yaml.count("<vol-") == len(stacks)  # the volumes are recorded by label
    bad_seg = tmp_path / "bad_seg.yaml"
    bad_seg.write_text(seg.read_text().replace("name: layers", "name: badlayers")
                       .replace(str(stacks[0]), str(corrupt)))
    run(["oct", "train-seg", str(bad_seg), "--runs-dir", str(runs)], expect=2)

    run(["oct", "info", str(dicoms[0])])
    run(["oct", "info", str(corrupt)], expect=2)
    run(["oct", "segment", str(dicoms[0]), "--model", str(model), "--runs-dir", str(runs)])
    run(["oct", "segment", str(corrupt), "--model", str(model), "--runs-dir", str(runs)], expect=2)
    run(["oct", "thickness", str(dicoms[0]), "--model", str(model), "--runs-dir", str(runs)])
    run(["oct", "thickness", str(corrupt), "--model", str(model), "--runs-dir", str(runs)], expect=2)
    run(["oct", "thickness", str(dicoms[1]), "--runs-dir", str(runs)], expect=2)  # no annotations

    pre = ("name: {name}\ninput: ir_image\nmaps: segment\nlayer_model: " + str(model) + "\n"
           "data: {{source: manifest, manifest: {manifest}, cache_dir: " + str(tmp_path / "cache") + "}}\n"
           "preprocess: {{size: 32}}\nmodel: {{arch: convnet, kwargs: {{width: 4, in_channels: 1}}}}\n"
           "predictions: 1\n" + engine.replace("{", "{{").replace("}", "}}"))
    good = tmp_path / "pre.yaml"
    good.write_text(pre.format(name="xmodal", manifest=manifest))
    run(["oct", "pretrain", str(good), "--runs-dir", str(runs)])
    bad = tmp_path / "bad_pre.yaml"
    bad.write_text(pre.format(name="badxmodal", manifest=bad_manifest))
    run(["oct", "pretrain", str(bad), "--runs-dir", str(runs)], expect=2)

    # every command left its run directory, the failing ones marked failed with their error
    names = sorted(p.name.split("-2")[0] for p in runs.iterdir())
    assert names == sorted(["layers", "badlayers", "oct-segment", "oct-segment", "oct-thickness",
                            "oct-thickness", "oct-thickness", "xmodal", "badxmodal"]), names
    failed = [json.loads((p / "run.json").read_text()) for p in runs.iterdir()
              if json.loads((p / "run.json").read_text())["status"] == "failed"]
    assert len(failed) == 5 and all(f.get("error") for f in failed)
    assert any("<file-" in f["error"] for f in failed)  # the file is named by its label
    xmodal = next(runs.glob("xmodal-*"))
    assert list(xmodal.glob("report/figures/crossmodal-eye-*.png"))
    assert (xmodal / "report" / "index.html").is_file() and (xmodal / "encoder").is_dir()
    blobs = {**tree(runs), **tree(tmp_path / "cache"), **outputs}
    assert any("events.out.tfevents" in k for k in blobs) and any("log.txt" in k for k in blobs)
    hits = find_identifiers(blobs)
    assert not hits, "\n".join(hits[:40])

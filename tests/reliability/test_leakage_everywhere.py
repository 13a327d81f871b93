"""Train/test leakage outside the sweeps (issue 21, item 13).

- every training command's splits go through the leakage check (``data.loading.ensure_splits``):
  a training copy of a test image is dropped, and the log says which and why; on IDRiD part B,
  train 118 (byte-identical to test 064, graded 0 vs 3) is among the dropped rows;
- a pretrained encoder records the content fingerprints and patient groups of its pool
  (``model.json`` ``pretraining_images``), and ``evaluate probe`` of an encoder pretrained on a pool
  holding a renamed copy of a test image warns naming both images.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from reliability.harness import run_cli


def _images(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` distinct 48 px fundus-like PNGs (a bright disc with random blobs)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 22 ** 2)
    for k in range(n):
        image = np.zeros((48, 48, 3), np.uint8)
        image[disc] = (40, 60, 150)
        for _ in range(6):
            y, x = rng.integers(8, 40, 2)
            cv2.circle(image, (int(x), int(y)), int(rng.integers(1, 4)), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        path = folder / f"img{seed}_{k:02d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def _manifest(path: Path, rows: list[tuple[str, Path, str, str, int]]) -> Path:
    lines = ["id,image,patient,eye,split,dr_grade"]
    lines += [f"{i},{p.relative_to(path.parent)},{pt},R,{s},{g}" for i, p, pt, s, g in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_training_splits_drop_copies_of_test_images(tmp_path: Path, monkeypatch, caplog) -> None:
    from retinassl.data.loading import ensure_splits
    from retinassl.data.manifest import Manifest

    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    images = _images(tmp_path / "img", 8, 0)
    copy = tmp_path / "img" / "renamed_copy.png"
    shutil.copyfile(images[6], copy)  # a training copy of test image t6 under another name
    rows = [(f"t{k}", p, f"p{k}", "train" if k < 6 else "test", k % 4) for k, p in enumerate(images)]
    rows.append(("copy", copy, "px", "train", 0))
    manifest = Manifest.load(_manifest(tmp_path / "m.csv", rows))
    with caplog.at_level(logging.WARNING, logger="retinassl"):
        splits = ensure_splits(SimpleNamespace(manifest=manifest), "dr_grade", 0)
    ids = manifest.frame["id"].to_numpy()
    assert sorted(ids[splits.train]) == [f"t{k}" for k in range(6)]  # the copy is gone
    assert sorted(ids[splits.test]) == ["t6", "t7"]                  # the test set is untouched
    assert "leakage check: 1 training/validation image(s) dropped" in caplog.text
    assert "copy (byte-identical to a test image: t6)" in caplog.text


def test_idrid_train_drops_b_train_118(monkeypatch, tmp_path: Path) -> None:
    from conftest import shared_dataset

    root = shared_dataset("idrid")
    from retinassl.data.loading import leaking_rows
    from retinassl.data.sources import load_source

    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    manifest = load_source("idrid", root=str(root), parts=["B"])
    removed = leaking_rows(manifest, ["dr_grade"])
    row = removed[removed["id"] == "idrid-B-train-IDRiD_118"]
    assert len(row) == 1 and row["related"].iloc[0] == "idrid-B-test-IDRiD_064"
    assert not removed["id"].str.contains("-test-").any()  # the official test set is never changed


@pytest.mark.slow
def test_evaluate_warns_when_the_encoder_saw_a_test_image(tmp_path: Path) -> None:
    images = _images(tmp_path / "down", 16, 1)
    rows = [(f"d{k:02d}", p, f"p{k}", "train" if k < 10 else "test", 3 * (k % 2))
            for k, p in enumerate(images)]
    downstream = _manifest(tmp_path / "downstream.csv", rows)
    pool_images = _images(tmp_path / "pool", 6, 2)
    leaked = tmp_path / "pool" / "unrelated_name.png"
    shutil.copyfile(images[12], leaked)  # test image d12, renamed, in the pretraining pool
    pool = _manifest(tmp_path / "pool.csv", [(f"u{k}", p, f"q{k}", "", 0) for k, p in enumerate(pool_images)]
                     + [("u-leak", leaked, "q-leak", "", 0)])
    (tmp_path / "pre.yaml").write_text(
        f"name: pre\ndata: {{source: manifest, manifest: {pool}}}\npreprocess: {{size: 32, normalize: max}}\n"
        "model: {arch: convnet, kwargs: {width: 4}}\nmethod: {name: rotation, lr: 0.002}\n"
        "engine: {max_epochs: 1, max_steps: 2, batch_size: 4, precision: '32', num_threads: 1, "
        "checkpoint_every_n_steps: -1}\n")
    proc = run_cli(["pretrain", "rotation", str(tmp_path / "pre.yaml"), "--runs-dir", str(tmp_path / "runs")], tmp_path,
                   wrapper=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    encoder = next((tmp_path / "runs").glob("pre-*/encoder"))
    record = json.loads((encoder / "model.json").read_text())["pretraining_images"]
    assert sorted(record["id"]) == sorted([f"u{k}" for k in range(6)] + ["u-leak"])
    assert len(set(record["digest"])) == 7
    (tmp_path / "eval.yaml").write_text(
        f"kind: transfer\nname: ev\ndata: {{source: manifest, manifest: {downstream}}}\n"
        "preprocess: {size: 32, normalize: max}\nmodel: {arch: convnet, kwargs: {width: 4}}\n"
        "tasks: [{name: referable, kind: binary, label: dr_grade, positive_from: 2}]\n"
        "fractions: [1.0]\nseeds: [0]\nprotocols: [probe]\nprobe: {c_grid: [1.0]}\n"
        "engine: {batch_size: 8, checkpoint_every_n_steps: -1, num_threads: 1}\nexplain: {tsne: false, gradcam: 0}\n")
    proc = run_cli(["evaluate", "probe", str(encoder), str(tmp_path / "eval.yaml"), "--runs-dir",
                    str(tmp_path / "runs")], tmp_path, wrapper=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "runs").glob("evaluate-probe-*"))
    log_text = (run / "logs" / "log.txt").read_text()
    assert "test d12 = pretraining u-leak (a byte-identical copy)" in log_text
    assert "test d12 = pretraining u-leak" in proc.stderr  # on the terminal too
    leaks = list(run.glob("data/pretraining-leaks-*.csv"))
    assert len(leaks) == 1 and leaks[0].read_text().count("\n") == 2  # header + the one pair
    assert (run / "results.csv").is_file()  # the evaluation still ran (a warning, not a refusal)


def test_commands_making_their_own_splits_drop_test_copies(tmp_path: Path, monkeypatch, caplog) -> None:
    """semisup (patient-grouped split) and segment train (train vs test_split): a renamed copy of a
    test image under another patient, and another image of a test patient, leave the training rows."""
    from retinassl.data.loading import drop_test_leaks
    from retinassl.data.manifest import Manifest

    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    images = _images(tmp_path / "img", 6, 3)
    copy = tmp_path / "img" / "copy.png"
    shutil.copyfile(images[5], copy)
    rows = [(f"a{k}", p, f"p{k}", "", 0) for k, p in enumerate(images)]
    rows += [("copy", copy, "px", "", 0), ("sibling", images[0], "p4", "", 0)]
    manifest = Manifest.load(_manifest(tmp_path / "m.csv", rows))
    # the sibling row reuses a0's file (byte-identical to a0, a training row) but shares test a4's patient
    with caplog.at_level(logging.WARNING, logger="retinassl"):
        kept = drop_test_leaks(manifest, np.array([0, 1, 2, 3, 6, 7]), np.array([4, 5]))
    assert list(kept) == [0, 1, 2, 3]
    assert "copy (byte-identical to test a5)" in caplog.text
    assert "sibling (same patient as test a4)" in caplog.text

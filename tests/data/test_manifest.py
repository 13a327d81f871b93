"""Manifest contract: validation names the row and file at fault; save/load round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinassl.data.manifest import Manifest
from retinassl.errors import DataError


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "m.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    return tmp_path


def rec(**kw):
    base = {"id": "a", "image": "a.png", "patient": "p1", "eye": "L", "split": "train"}
    base.update(kw)
    return base


def test_valid_manifest_round_trips(root: Path, tmp_path: Path) -> None:
    m = Manifest.from_records([rec(abnormal=1, mask_EX="m.png"), rec(id="b", image="b.png", eye="R",
                                                                     split="test", abnormal=0)], root)
    path = m.save(tmp_path / "out" / "manifest.csv")
    back = Manifest.load(path)
    assert back.root == root.resolve()
    assert back.ids == ["a", "b"]
    assert back.labels("abnormal").tolist() == [1, 0]
    assert back.path(0, "mask_EX") == root.resolve() / "m.png"
    assert back.path(1, "mask_EX") is None
    assert back.fingerprint() == m.fingerprint()


def test_missing_required_column(root: Path) -> None:
    with pytest.raises(DataError, match=r"missing required column\(s\) \['image'\]"):
        Manifest(pd.DataFrame([{"id": "a", "patient": "", "eye": "", "split": ""}]), root).validate()


@pytest.mark.parametrize("records, message", [
    ([rec(), rec()], r"row 1: duplicate id 'a' \(first seen in row 0\)"),
    ([rec(), rec(id="b", abnormal=2)], r"row 1: id 'b': abnormal is 2; expected an integer in \[0, 1\]"),
    ([rec(dr_grade=2.5)], r"row 0: id 'a': dr_grade is 2.5"),
    ([rec(dr_grade="severe")], r"row 0: id 'a': dr_grade is 'severe', not a number"),
    ([rec(dme=float("inf"))], r"dme is inf"),
    ([rec(id="b", image="missing.png")], r"row 0: id 'b': image file does not exist"),
    ([rec(image="../outside.png")], r"row 0: id 'a': image path '../outside.png' escapes the dataset root"),
    ([rec(image="/etc/passwd")], r"escapes the dataset root"),
    ([rec(split="training")], r"row 0: id 'a': split is 'training'"),
    ([rec(eye="left")], r"eye is 'left'"),
    ([rec(id="a/b")], r"row 0: id 'a/b' is empty or not a safe name"),
])
def test_bad_rows_name_row_and_problem(root: Path, records, message) -> None:
    with pytest.raises(DataError, match=message):
        Manifest.from_records(records, root)


def test_nan_label_means_unlabelled_and_require_labels_names_row(root: Path) -> None:
    m = Manifest.from_records([rec(abnormal=1), rec(id="b", image="b.png", abnormal=float("nan"))], root)
    assert m.labels("abnormal").tolist() == [1, -1]
    with pytest.raises(DataError, match=r"row 1: id 'b': abnormal is missing for 1 row"):
        m.require_labels("abnormal")


def test_empty_dataset(root: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        Manifest.from_records([], root)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest file does not exist"):
        Manifest.load(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,image\n")
    with pytest.raises(DataError, match=rf"{bad}: missing required column"):
        Manifest.load(bad)


def test_concat_rebases_paths(tmp_path: Path) -> None:
    for sub in ("d1", "d2"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / sub / "x.png")
    a = Manifest.from_records([rec(id="d1-x", image="x.png")], tmp_path / "d1")
    b = Manifest.from_records([rec(id="d2-x", image="x.png")], tmp_path / "d2")
    c = Manifest.concat([a, b])
    assert c.root == tmp_path.resolve()
    assert c.frame["image"].tolist() == ["d1/x.png", "d2/x.png"]
    with pytest.raises(DataError, match="duplicate id"):
        Manifest.concat([a, a])

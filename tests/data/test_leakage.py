"""Duplicate and leakage cleaning of downstream data and of the pretraining pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retinassl.data.file_digests import DigestMemo
from retinassl.data.manifest import Manifest
from retinassl.data.leakage import clean_downstream, clean_pool, content_digests


def _manifest(tmp_path: Path, rows: list[tuple[str, str, str, int, str]]) -> Manifest:
    """rows: (id, content, split, grade, patient); files with equal content are byte-identical."""
    for ident, content, *_ in rows:
        (tmp_path / f"{ident}.png").write_bytes(content.encode())
    return Manifest.from_records([{"id": i, "image": f"{i}.png", "patient": p, "eye": "", "split": s,
                                   "dr_grade": g} for i, _, s, g, p in rows], tmp_path)


def test_clean_downstream_rules(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [
        ("a", "A", "train", 1, ""), ("a2", "A", "train", 1, ""),      # same labels: keep one
        ("b", "B", "train", 1, ""), ("b2", "B", "train", 2, ""),      # conflicting: drop both
        ("c", "C", "train", 0, ""), ("t1", "C", "test", 3, ""),       # copy of a test image
        ("d", "D", "train", 2, "eye9"), ("t2", "E", "test", 2, "eye9"),  # same eye as a test image
        ("e", "F", "train", 0, "")])
    digests = content_digests(m, DigestMemo(tmp_path / "memo.sqlite"))
    clean, removed = clean_downstream(m, ["dr_grade"], digests)
    assert clean.ids == ["a", "t1", "t2", "e"]
    reasons = dict(zip(removed["id"], removed["reason"]))
    assert reasons["a2"].startswith("byte-identical copy")
    assert reasons["b"] == reasons["b2"] == "byte-identical copies with conflicting labels"
    assert reasons["c"] == "byte-identical to a test image"
    assert reasons["d"].startswith("same patient/eye")
    (tmp_path / "pool").mkdir()
    pool = _manifest(tmp_path / "pool", [
        ("p1", "C", "", 0, ""), ("t1", "C", "test", 3, ""), ("p2", "Z", "", 0, "eye9"), ("p3", "Y", "", 0, "")])
    test = clean.subset((clean.frame["split"] == "test").to_numpy())
    memo = DigestMemo(tmp_path / "memo.sqlite")
    kept, dropped = clean_pool(pool, test, content_digests(pool, memo), content_digests(test, memo))
    assert kept.ids == ["p2", "p3"]  # p2's patient group is its own dataset's: not linked to t2
    assert set(dropped["id"]) == {"p1", "t1"}


@pytest.mark.realdata
def test_idrid_part_b_leaks_are_removed(tmp_path: Path) -> None:
    from conftest import shared_dataset

    from retinassl.data.sources import load_source

    root = shared_dataset("idrid")
    full = load_source("idrid", root=str(root), parts=["A", "B"])
    part_b = full.subset((full.frame["part"] == "B").to_numpy())
    memo = DigestMemo(tmp_path / "memo.sqlite")
    clean, removed = clean_downstream(part_b, ["dr_grade", "dme"], content_digests(part_b, memo))
    gone = set(removed["id"])
    name = "idrid-B-train-IDRiD_{:03d}".format
    assert name(118) in gone                                   # = test 064, grade 0 vs 3
    assert {name(21), name(391), name(28), name(327), name(45), name(333)} <= gone  # conflicts
    assert len({name(79), name(279)} & gone) == 1 and len({name(73), name(375)} & gone) == 1
    assert name(17) in gone                                    # same eye as test 072
    split = clean.frame["split"].to_numpy()
    assert (split == "test").sum() == 103                      # the official test set is untouched
    test = clean.subset(split == "test")
    pool, dropped = clean_pool(full, test, content_digests(full, memo), content_digests(test, memo))
    assert not set(pool.ids) & set(test.ids)
    assert "idrid-A-test-IDRiD_70" in set(dropped["id"])       # the part-A twin of B-test 006
    assert name(118) in set(dropped["id"])
    assert np.isin(pool.frame["part"], ["A", "B"]).all() and len(pool) < len(full) - 103

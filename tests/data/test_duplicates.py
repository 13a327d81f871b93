"""Near-duplicate detector: the pieces against hand computations, synthetic copies and shifted
copies, and the documented duplicate pairs of ../shared/data/idrid."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

from retinassl.data import duplicates as dup
from retinassl.data.manifest import Manifest
from retinassl.data.sources.idrid import load_idrid, read_matches
from retinassl.data.sources.idrid_links import PART_B_IDENTICAL, SAME_EYE_FOUND
from retinassl.data.synthetic_fundus import render_eye


def test_hamming_matrix_matches_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    bits = rng.random((7, 64)) < 0.5
    expected = np.array([[int((a != b).sum()) for b in bits] for a in bits])
    assert np.array_equal(dup.hamming_matrix(bits), expected)


def test_shift_correlation_finds_a_shifted_copy() -> None:
    rng = np.random.default_rng(1)
    a = np.zeros((40, 40), np.float32)
    a[8:32, 8:32] = rng.normal(size=(24, 24))
    a /= np.linalg.norm(a)
    shifted = np.roll(a, (5, -6), axis=(0, 1))       # content stays inside the zero border
    other = np.zeros_like(a)
    other[8:32, 8:32] = rng.normal(size=(24, 24))
    other /= np.linalg.norm(other)
    scores = dup.shift_correlation(a, np.stack([a, shifted, other]), max_shift=0.2)
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[1] == pytest.approx(1.0, abs=1e-5)
    assert scores[2] < 0.3
    # a shift beyond the allowed range is not found
    far = np.roll(a, (0, 8), axis=(0, 1))
    assert dup.shift_correlation(a, far[None], max_shift=0.1)[0] < 0.5


def _save(path: Path, rgb: np.ndarray, quality: int = 95) -> str:
    cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path.name


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """Four synthetic eyes, a re-encoded half-size copy of eye 0 and a shifted photograph of eye 1."""
    root = tmp_path_factory.mktemp("dups")
    eyes = [render_eye(seed, 192) for seed in range(4)]
    records = []
    for n, eye in enumerate(eyes):
        name = _save(root / f"eye{n}.png", eye.image)
        records.append({"id": f"eye{n}", "image": name, "split": "train", "dataset": "a"})
    small = cv2.resize(eyes[0].image, (144, 144), interpolation=cv2.INTER_AREA)
    records.append({"id": "eye0-copy", "image": _save(root / "copy.jpg", small, 75),
                    "split": "test", "dataset": "a"})
    moved = np.roll(eyes[1].image, (9, -12), axis=(0, 1)) * eyes[1].masks["fov"][..., None]
    records.append({"id": "eye1-shifted", "image": _save(root / "shifted.png", moved),
                    "split": "train", "dataset": "b"})
    return Manifest.from_records(records, root, name="synthetic")


def test_synthetic_copies_and_shifts_are_found(synthetic: Manifest, tmp_path: Path) -> None:
    pairs = dup.find_duplicates(synthetic, cache=tmp_path)
    assert list(pairs.columns) == list(dup.PAIR_COLUMNS)
    found = {(a, b, k) for a, b, k in zip(pairs["id_a"], pairs["id_b"], pairs["kind"])}
    assert found == {("eye0", "eye0-copy", "same_image"), ("eye1", "eye1-shifted", "same_eye")}
    same = pairs.set_index("kind")
    assert same.loc["same_image", "distance"] <= dup.MAX_DISTANCE
    assert same.loc["same_eye", "distance"] > dup.MAX_DISTANCE        # pHash alone misses it
    # cached fingerprints give the same answer
    assert len(list(tmp_path.rglob("*.npz"))) == len(synthetic)
    again = dup.find_duplicates(synthetic, cache=tmp_path)
    assert again[["id_a", "id_b", "kind"]].equals(pairs[["id_a", "id_b", "kind"]])
    # without the second check only the copy remains
    assert dup.find_duplicates(synthetic, same_eye=False, cache=False)["id_b"].tolist() == ["eye0-copy"]


def test_leakage_report_and_groups(synthetic: Manifest) -> None:
    pairs = dup.find_duplicates(synthetic, cache=False)
    report = dup.leakage_report(pairs).set_index("id_b")
    assert report.loc["eye0-copy", "problem"] == "train/test"
    assert report.loc["eye1-shifted", "problem"] == "dataset a/b"
    groups = dup.duplicate_groups(pairs, synthetic.ids)
    assert groups["eye0-copy"] == "eye0" and groups["eye1-shifted"] == "eye1"
    assert groups["eye2"] == "eye2"


def test_several_manifests_are_combined(synthetic: Manifest) -> None:
    first = synthetic.subset(np.arange(4))
    second = synthetic.subset(np.arange(4, 6))
    pairs = dup.find_duplicates([first, second], cache=False)
    assert set(pairs["id_b"]) == {"eye0-copy", "eye1-shifted"}


@pytest.mark.realdata
def test_drive_has_no_duplicates() -> None:
    from retinassl.data.sources import load_drive

    assert len(dup.find_duplicates(load_drive(shared_dataset("drive")), cache=False)) == 0


# -- IDRiD -------------------------------------------------------------------------------------
SUBSET_PAIRS = {
    ("idrid-B-train-IDRiD_021", "idrid-B-train-IDRiD_391", "same_image"),   # byte-identical
    ("idrid-B-train-IDRiD_118", "idrid-B-test-IDRiD_064", "same_image"),    # ... across splits
    ("idrid-A-train-IDRiD_01", "idrid-B-train-IDRiD_102", "same_image"),    # part A = part B
    ("idrid-A-test-IDRiD_59", "idrid-B-train-IDRiD_128", "same_image"),     # re-encoded twin
    ("idrid-A-train-IDRiD_39", "idrid-B-train-IDRiD_271", "same_eye"),      # slightly shifted
    ("idrid-A-train-IDRiD_26", "idrid-B-train-IDRiD_299", "same_eye"),      # found here
}


@pytest.mark.realdata
def test_idrid_subset_pairs_are_found_and_nothing_else() -> None:
    m = load_idrid(shared_dataset("idrid"), parts=("A", "B"))
    wanted = {i for pair in SUBSET_PAIRS for i in pair[:2]}
    wanted |= {f"idrid-B-train-IDRiD_{n:03d}" for n in range(200, 224)}   # unrelated images
    subset = m.subset(m.frame["id"].isin(wanted).to_numpy())
    pairs = dup.find_duplicates(subset, cache=False)
    found = {(a, b, k) for a, b, k in zip(pairs["id_a"], pairs["id_b"], pairs["kind"])}
    assert found == SUBSET_PAIRS
    report = dup.leakage_report(pairs)
    assert set(zip(report["id_a"], report["id_b"], report["problem"])) == {
        ("idrid-B-train-IDRiD_118", "idrid-B-test-IDRiD_064", "train/test"),
        ("idrid-A-test-IDRiD_59", "idrid-B-train-IDRiD_128", "test/train")}


@pytest.mark.realdata
@pytest.mark.slow
def test_idrid_all_documented_pairs() -> None:
    """Every pair of SOURCE.md and seg_to_grading_matches.csv, and no pair of different eyes."""
    root = shared_dataset("idrid")
    m = load_idrid(root, parts=("A", "B"))
    links = [(a, b) for a, b, _ in read_matches(root / "seg_to_grading_matches.csv")]
    links += list(PART_B_IDENTICAL)
    link_table = pd.DataFrame({"id_a": [a for a, _ in links], "id_b": [b for _, b in links]})
    groups = dup.duplicate_groups(link_table, m.ids)
    members: dict[str, list[str]] = {}
    for item, group in groups.items():
        members.setdefault(group, []).append(item)
    reference = {tuple(sorted(p)) for g in members.values() for p in itertools.combinations(g, 2)}
    assert len(reference) == 69
    pairs = dup.find_duplicates(m, cache=False)
    found = {tuple(sorted(p)) for p in zip(pairs["id_a"], pairs["id_b"])}
    assert reference <= found
    confirmed = reference | {tuple(sorted(p)) for p in SAME_EYE_FOUND}
    confirmed |= {("idrid-A-test-IDRiD_68", "idrid-B-train-IDRiD_028"),
                  ("idrid-A-test-IDRiD_68", "idrid-B-train-IDRiD_327")}
    assert found <= confirmed

"""RFMiD and EyePACS sources: label tables against their dataset notes, manifests for the images on
disk, and CSV errors that name the line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import shared_dataset
from PIL import Image

from retinassl.data.sources import load_eyepacs, load_rfmid, read_eyepacs_labels, read_rfmid_labels
from retinassl.errors import DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- RFMiD -------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_rfmid_label_table() -> None:
    table = read_rfmid_labels(shared_dataset("rfmid_subset") / "RFMiD_Training_Labels.csv")
    assert len(table) == 1920
    assert table.columns[0] == "ID" and table.columns[1] == "Disease_Risk"   # BOM removed
    assert len(table.columns) == 47        # ID + Disease_Risk + 45 diseases
    assert table["ID"].tolist()[:3] == ["1", "2", "3"]
    assert set(table["DR"].unique()) <= {0, 1}


@pytest.mark.realdata
def test_rfmid_manifest_has_the_images_on_disk() -> None:
    m = load_rfmid(shared_dataset("rfmid_subset"))
    f = m.frame.set_index("id")
    assert len(m) == 10
    diseases = [c for c in f.columns if c.startswith("disease_")]
    assert len(diseases) == 45 and diseases[:3] == ["disease_DR", "disease_ARMD", "disease_MH"]
    assert int(f["abnormal"].sum()) == 9 and f.loc["rfmid-train-10", "abnormal"] == 0
    assert [i for i in range(1, 11) if f.loc[f"rfmid-train-{i}", "disease_DR"] == 1] == [1, 2, 3, 5]
    assert f.loc["rfmid-train-1", "image"] == "Training_Set/1.png"


def test_rfmid_bad_tables(tmp_path: Path) -> None:
    csv = write(tmp_path / "RFMiD_Training_Labels.csv", "ID,Disease_Risk,DR\n1,1,1\n2,1,2\n")
    with pytest.raises(DataError, match=r"line 3: DR is '2'"):
        read_rfmid_labels(csv)
    write(csv, "ID,Disease_Risk,DR\n1,1,1\n1,0,0\n")
    with pytest.raises(DataError, match="line 3: ID '1' appears twice"):
        read_rfmid_labels(csv)
    write(csv, "ID,DR\n1,1\n")
    with pytest.raises(DataError, match="missing column.*Disease_Risk"):
        read_rfmid_labels(csv)
    write(csv, "ID,Disease_Risk,DR\n1,1,1\n")
    with pytest.raises(DataError, match="none of the 1 labelled RFMiD images is on disk"):
        load_rfmid(tmp_path)


# -- EyePACS -----------------------------------------------------------------------------------
@pytest.mark.realdata
def test_eyepacs_label_table() -> None:
    table = read_eyepacs_labels(shared_dataset("kaggle_eyepacs_dr_labels") / "trainLabels.csv")
    assert len(table) == 35126
    assert table["dr_grade"].value_counts().sort_index().tolist() == [25810, 2443, 5292, 873, 708]
    assert table.iloc[0].tolist() == ["10_left", "10", "L", 0]
    assert table["patient"].nunique() == 17563 and set(table["eye"]) == {"L", "R"}


@pytest.mark.parametrize("rows, message", [
    ("10_left,0\n10_right,5\n", "line 3: level is '5'"),
    ("10_left,0\n10_middle,1\n", "line 3: image '10_middle' is not"),
    ("10_left,0\n10_left,1\n", "line 3: image '10_left' is listed twice"),
    ("10_left,\n", "line 2: level is ''"),
])
def test_eyepacs_bad_rows(tmp_path: Path, rows: str, message: str) -> None:
    csv = write(tmp_path / "trainLabels.csv", "image,level\n" + rows)
    with pytest.raises(DataError, match=message) as info:
        read_eyepacs_labels(csv)
    assert str(csv) in str(info.value)


def test_eyepacs_manifest_and_missing_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = write(tmp_path / "trainLabels.csv", "image,level\n10_left,0\n10_right,2\n13_left,1\n")
    images = tmp_path / "train"
    images.mkdir()
    for name in ("10_left.jpeg", "10_right.png"):
        Image.new("RGB", (8, 8)).save(images / name)
    with pytest.raises(DataError, match=r"trainLabels.csv: line 4: 1 of 3 labelled images are not"):
        load_eyepacs(images, csv)
    with caplog.at_level(logging.WARNING):
        m = load_eyepacs(images, csv, skip_missing=True)
    assert "skipped 1 of 3" in caplog.text
    f = m.frame
    assert f["id"].tolist() == ["eyepacs-10_left", "eyepacs-10_right"]
    assert f["patient"].tolist() == ["eyepacs-10", "eyepacs-10"] and f["eye"].tolist() == ["L", "R"]
    assert f["dr_grade"].tolist() == [0, 2] and f["abnormal"].tolist() == [0, 1]
    assert f["image"].tolist() == ["10_left.jpeg", "10_right.png"]

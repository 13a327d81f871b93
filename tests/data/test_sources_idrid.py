"""IDRiD source: counts against the dataset notes (../shared/data/idrid/SOURCE.md), ids, links that
prevent leakage, the 249-image set, the DR pool, masks at their image's size; and error paths on a
tiny fake IDRiD tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset
from PIL import Image

from retinassl.data.imageio import image_size, read_mask
from retinassl.data.manifest import Manifest
from retinassl.data.sources.idrid import (MASK_FOLDERS, idrid_dr_pool, idrid_ssl_gan_set,
                                          is_annotated, load_idrid)
from retinassl.errors import ConfigError, DataError

LESIONS = ("MA", "HE", "EX", "SE", "OD")


@pytest.fixture(scope="module")
def idrid() -> Manifest:
    return load_idrid(shared_dataset("idrid"))


def counts(series: pd.Series) -> list[int]:
    return series.value_counts().sort_index().astype(int).tolist()


@pytest.mark.realdata
def test_counts_match_the_dataset_notes(idrid: Manifest) -> None:
    f = idrid.frame
    a, b = f[f["part"] == "A"], f[f["part"] == "B"]
    assert len(a) == 81 and counts(a["split"]) == [27, 54]          # test, train
    assert (a["abnormal"] == 1).all() and a["dr_grade"].isna().all()
    assert len(b) == 516 and counts(b["split"]) == [103, 413]
    train, test = b[b["split"] == "train"], b[b["split"] == "test"]
    assert counts(train["dr_grade"]) == [134, 20, 136, 74, 49]
    assert counts(test["dr_grade"]) == [34, 5, 32, 19, 13]
    assert counts(train["dme"]) == [177, 41, 195] and counts(test["dme"]) == [45, 10, 48]
    assert ((b["dr_grade"] > 0).astype(int) == b["abnormal"]).all()
    present = {t: int((a[f"mask_{t}"].fillna("") != "").sum()) for t in LESIONS}
    assert present == {"MA": 81, "HE": 80, "EX": 81, "SE": 40, "OD": 81}


@pytest.mark.realdata
def test_ids_are_unique_and_self_explaining(idrid: Manifest) -> None:
    ids = idrid.frame["id"]
    assert ids.is_unique
    for item in ("idrid-A-train-IDRiD_01", "idrid-A-test-IDRiD_81", "idrid-B-train-IDRiD_001",
                 "idrid-B-test-IDRiD_001"):
        assert item in set(ids)
    row = idrid.frame.set_index("id").loc["idrid-B-test-IDRiD_001"]
    assert row["image"].endswith("b. Testing Set/IDRiD_001.jpg")
    assert (row["dr_grade"], row["dme"]) == (4, 0)


@pytest.mark.realdata
def test_missing_lesion_mask_means_no_lesion(idrid: Manifest) -> None:
    f = idrid.frame.set_index("id")
    row = f.loc["idrid-A-train-IDRiD_43"]
    assert row["mask_HE"] == "" and is_annotated(row, "HE")
    assert row["lesions_annotated"] == "MA,HE,EX,SE"
    b_row = f.loc["idrid-B-train-IDRiD_001"]
    assert not is_annotated(b_row, "HE")


@pytest.mark.realdata
def test_part_c_centres_on_part_b_rows(idrid: Manifest) -> None:
    f = idrid.frame
    b = f[f["part"] == "B"]
    for column in ("od_x", "od_y", "fovea_x", "fovea_y"):
        assert b[column].notna().all() and f.loc[f["part"] == "A", column].isna().all()
    assert ((b["od_x"] < 2144) & (b["od_y"] < 1424)).all()
    row = f.set_index("id").loc["idrid-B-train-IDRiD_001"]
    assert (row["fovea_x"], row["od_y"]) == (747.0, 902.5)


@pytest.mark.realdata
def test_links_put_twins_and_copies_in_one_patient(idrid: Manifest) -> None:
    f = idrid.frame.set_index("id")
    a01 = f.loc["idrid-A-train-IDRiD_01"]
    assert a01["twin"] == "idrid-B-train-IDRiD_102" and a01["twin_match"] == "same_image"
    assert a01["patient"] == f.loc["idrid-B-train-IDRiD_102", "patient"]
    assert f.loc["idrid-A-train-IDRiD_39", "twin_match"] == "same_eye_slightly_shifted"
    assert f.loc["idrid-B-train-IDRiD_118", "duplicate_of"] == "idrid-B-test-IDRiD_064"
    assert f.loc["idrid-B-train-IDRiD_118", "patient"] == f.loc["idrid-B-test-IDRiD_064", "patient"]
    triangle = {f.loc[i, "patient"] for i in ("idrid-A-test-IDRiD_62", "idrid-B-train-IDRiD_073",
                                              "idrid-B-train-IDRiD_375")}
    assert len(triangle) == 1
    assert (f["twin"].str.startswith("idrid-B")).sum() == 61
    assert f.loc["idrid-A-train-IDRiD_26", "same_eye_as"] == "idrid-B-train-IDRiD_299"
    assert f.loc["idrid-A-train-IDRiD_04", "patient"] == "idrid-A-train-IDRiD_04"


@pytest.mark.realdata
def test_ssl_gan_249_set() -> None:
    m = idrid_ssl_gan_set(shared_dataset("idrid"))
    f = m.frame
    assert len(m) == 249
    assert counts(f["abnormal"]) == [168, 81]
    assert counts(f["part"]) == [81, 168]
    assert (f.loc[f["part"] == "B", "dr_grade"] == 0).all()
    # no grade-0 image is linked to a lesion image (A IDRiD_68/69, one eye, is the only shared patient)
    assert not set(f.loc[f["part"] == "A", "patient"]) & set(f.loc[f["part"] == "B", "patient"])
    assert f["patient"].nunique() == 248


@pytest.mark.realdata
def test_dr_pool_excludes_everything_linked_to_the_249() -> None:
    root = shared_dataset("idrid")
    labelled = idrid_ssl_gan_set(root)
    pool = idrid_dr_pool(root, exclude=labelled, check_images=False)
    f = pool.frame
    assert (f["part"] == "B").all() and (f["dr_grade"] > 0).all()
    assert not set(f["patient"]) & set(labelled.frame["patient"])
    assert "idrid-B-test-IDRiD_064" not in set(f["id"])          # copy of grade-0 B-train 118
    assert "idrid-B-train-IDRiD_102" not in set(f["id"])         # twin of part-A IDRiD_01
    copies = {("idrid-B-train-IDRiD_021", "idrid-B-train-IDRiD_391")}
    for a, b in copies:
        assert not {a, b} <= set(f["id"])
    assert len(pool) == 269          # of the 348 part-B DR images


@pytest.mark.realdata
def test_masks_open_at_their_image_size_sample(idrid: Manifest) -> None:
    f = idrid.frame
    rows = f.index[f["id"].isin(["idrid-A-train-IDRiD_43", "idrid-A-test-IDRiD_81",
                                 "idrid-A-train-IDRiD_05"])]
    for r in rows:
        size = image_size(idrid.path(r))
        for lesion in LESIONS:
            path = idrid.path(r, f"mask_{lesion}")
            if path is not None:
                assert read_mask(path, expected_size=size).shape == (size[1], size[0])


@pytest.mark.realdata
@pytest.mark.slow
def test_all_masks_open_at_their_image_size(idrid: Manifest) -> None:
    for r in np.flatnonzero((idrid.frame["part"] == "A").to_numpy()):
        size = image_size(idrid.path(r))
        for lesion in LESIONS:
            path = idrid.path(r, f"mask_{lesion}")
            if path is not None:
                read_mask(path, expected_size=size)


# -- error paths on a fake tree ------------------------------------------------------------------
def fake_idrid(root: Path, grade: str = "2") -> Path:
    """Two part-A images per split with masks, two part-B images per split with labels."""
    def img(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (90, 40, 10)).save(path)

    for split, folder in (("train", "a. Training Set"), ("test", "b. Testing Set")):
        for n in ("01", "02"):
            img(root / "A. Segmentation/1. Original Images" / folder / f"IDRiD_{n}.jpg")
            for lesion, sub in MASK_FOLDERS.items():
                if lesion == "SE" and n == "02":
                    continue
                mask = root / "A. Segmentation/2. All Segmentation Groundtruths" / folder / sub
                mask.mkdir(parents=True, exist_ok=True)
                Image.new("1", (8, 6), 1).save(mask / f"IDRiD_{n}_{lesion}.tif")
            img(root / "B. Disease Grading/1. Original Images" / folder / f"IDRiD_0{n}.jpg")
        labels = root / "B. Disease Grading/2. Groundtruths"
        labels.mkdir(parents=True, exist_ok=True)
        name = "Training" if split == "train" else "Testing"
        (labels / f"{folder[:2]} IDRiD_Disease Grading_{name} Labels.csv").write_text(
            f"Image name,Retinopathy grade,Risk of macular edema ,,\r\nIDRiD_001,0,0,,\r\n"
            f"IDRiD_002,{grade},1,,\r\n")
    return root


def test_fake_tree_loads_without_part_c(tmp_path: Path) -> None:
    root = fake_idrid(tmp_path)
    m = load_idrid(root, parts=("A", "B"))
    assert len(m) == 8
    assert m.frame.set_index("id").loc["idrid-A-test-IDRiD_02", "mask_SE"] == ""
    assert (m.frame["patient"] == m.frame["id"]).all()      # no match table: no links


def test_fake_tree_errors(tmp_path: Path) -> None:
    root = fake_idrid(tmp_path, grade="7")
    with pytest.raises(DataError, match=r"Training Labels.csv: line 3: Retinopathy grade is '7'"):
        load_idrid(root, parts=("B",))
    with pytest.raises(DataError, match="part C .* no CSV found"):
        load_idrid(fake_idrid(tmp_path / "ok"))
    with pytest.raises(ConfigError, match="needs|add 'B'"):
        load_idrid(root, parts=("A", "C"))
    with pytest.raises(ConfigError, match="parts must be"):
        load_idrid(root, parts=("D",))
    stray = (root / "A. Segmentation/2. All Segmentation Groundtruths/a. Training Set"
             / MASK_FOLDERS["MA"] / "IDRiD_09_MA.tif")
    Image.new("1", (8, 6), 1).save(stray)
    with pytest.raises(DataError, match="matches no part-A train image") as info:
        load_idrid(root, parts=("A",))
    assert "IDRiD_09_MA.tif" in str(info.value)


def test_fake_tree_unlabelled_image(tmp_path: Path) -> None:
    root = fake_idrid(tmp_path)
    Image.new("RGB", (8, 6)).save(root / "B. Disease Grading/1. Original Images/b. Testing Set"
                                  / "IDRiD_003.jpg")
    with pytest.raises(DataError, match="have no row in the labels CSV .*IDRiD_003"):
        load_idrid(root, parts=("B",))


@pytest.mark.realdata
@pytest.mark.slow
def test_dr_pool_image_check_agrees_with_the_known_links(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector finds no further duplicate of the 249-image set among the linked-out pool."""
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path))
    root = shared_dataset("idrid")
    checked = idrid_dr_pool(root)
    assert checked.ids == idrid_dr_pool(root, check_images=False).ids


def test_fake_tree_with_official_part_c_tables(tmp_path: Path) -> None:
    root = fake_idrid(tmp_path)
    folder = root / "C. Localization" / "2. Groundtruths"
    for sub, name, kind in (("1. Optic Disc Center Location", "OD", "od"),
                            ("2. Fovea Center Location", "Fovea", "fovea")):
        for split in ("Training", "Testing"):
            write_csv = folder / sub / f"{'ab'[split == 'Testing']}. IDRiD_{name}_Center_{split} Set_Markups.csv"
            write_csv.parent.mkdir(parents=True, exist_ok=True)
            write_csv.write_text("Image No,X- Coordinate,Y - Coordinate,,\r\n"
                                 f"IDRiD_001,{1 if kind == 'od' else 5},2,,\r\nIDRiD_002,3,4,,\r\n,,,,\r\n")
    f = load_idrid(root).frame.set_index("id")
    row = f.loc["idrid-B-test-IDRiD_001"]
    assert (row["od_x"], row["od_y"], row["fovea_x"], row["fovea_y"]) == (1.0, 2.0, 5.0, 2.0)
    assert np.isnan(f.loc["idrid-A-train-IDRiD_01", "od_x"])

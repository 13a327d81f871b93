"""Generic sources (class folders, CSV, glob patterns) and the source registry, on tiny datasets
written into tmp_path; every bad input must name the file and the row/line at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinassl.data.sources import SOURCES, load_csv, load_folder, load_glob, load_source
from retinassl.errors import ConfigError, DataError


def png(path: Path, value: int = 128, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value // 2, 0)).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- load_folder -------------------------------------------------------------------------------
def test_folder_binary_classes(tmp_path: Path) -> None:
    root = tmp_path / "screen"
    png(root / "normal" / "a.png")
    png(root / "normal" / "b.png")
    png(root / "Abnormal" / "a.png")
    m = load_folder(root)
    frame = m.frame.set_index("id")
    assert sorted(frame.index) == ["screen-Abnormal-a", "screen-normal-a", "screen-normal-b"]
    assert frame.loc["screen-Abnormal-a", "abnormal"] == 1
    assert frame.loc["screen-normal-b", "abnormal"] == 0
    assert frame.loc["screen-normal-a", "image"] == "normal/a.png"
    assert "class_index" not in frame.columns


def test_folder_refuses_to_guess_the_positive_class(tmp_path: Path) -> None:
    png(tmp_path / "healthy" / "a.png")
    png(tmp_path / "dr" / "b.png")
    with pytest.raises(ConfigError, match=r"two classes \['dr', 'healthy'\].*data\.options\.positive"):
        load_folder(tmp_path)
    frame = load_folder(tmp_path, positive="dr").frame.set_index("class_name")
    assert (frame.loc["dr", "abnormal"], frame.loc["healthy", "abnormal"]) == (1, 0)
    (tmp_path / "dr").rename(tmp_path / "Disease")              # normal/abnormal-like names: no guess
    frame = load_folder(tmp_path).frame.set_index("class_name")
    assert (frame.loc["Disease", "abnormal"], frame.loc["healthy", "abnormal"]) == (1, 0)


def test_folder_numeric_binary_and_split_layout(tmp_path: Path) -> None:
    png(tmp_path / "training" / "0" / "x.png")
    png(tmp_path / "training" / "1" / "y.png")
    png(tmp_path / "test" / "1" / "x.png")
    m = load_folder(tmp_path, prefix="d")
    frame = m.frame.set_index("id")
    assert frame.loc["d-train-0-x", "split"] == "train"
    assert frame.loc["d-test-1-x", "abnormal"] == 1
    assert frame.loc["d-train-0-x", "abnormal"] == 0


def test_folder_multiclass_records_mapping(tmp_path: Path) -> None:
    for name in ("glaucoma", "amd", "dr"):
        png(tmp_path / name / "1.png")
    m = load_folder(tmp_path, prefix="x")
    pairs = dict(zip(m.frame["class_name"], m.frame["class_index"]))
    assert pairs == {"amd": 0, "dr": 1, "glaucoma": 2}
    assert "abnormal" not in m.frame.columns


@pytest.mark.parametrize("layout, culprit", [
    ({"loose.png": None, "normal/a.png": None}, "loose.png"),       # image next to class folders
    ({"normal/deeper/a.png": None}, "deeper"),                       # nested folder
    ({"normal/a.png": None, "abnormal/readme.txt": "x"}, "abnormal"),  # class folder without images
    ({"train/normal/a.png": None, "other/b.png": None}, "mixes split folders"),
    ({"a.png": None}, "a.png"),                                      # no class folder at all
])
def test_folder_bad_structure(tmp_path: Path, layout: dict, culprit: str) -> None:
    for rel, text in layout.items():
        write(tmp_path / rel, text) if text else png(tmp_path / rel)
    with pytest.raises(DataError, match=culprit):
        load_folder(tmp_path)


def test_folder_id_clash_names_both_files(tmp_path: Path) -> None:
    png(tmp_path / "normal" / "a b.png")
    png(tmp_path / "normal" / "a_b.png")
    with pytest.raises(DataError, match="a_b.png|a b.png") as info:
        load_folder(tmp_path)
    assert "two images get the id" in str(info.value)


def test_folder_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class sub-folders"):
        load_folder(tmp_path)


# -- load_csv ----------------------------------------------------------------------------------
@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        png(tmp_path / "img" / f"{name}.png")
    png(tmp_path / "masks" / "a_od.png", 255, mode="L")
    return tmp_path


def test_csv_happy_path(csv_root: Path) -> None:
    csv = write(csv_root / "labels.csv",
                "\ufeffpath , referable,subject,eye,split,mask_OD,site\r\n"
                "img/a.png,1,p1,left,training,masks/a_od.png,x\r\n"
                "img/b.png,0,p1,OD,test,,y\r\n"
                f"{csv_root / 'img' / 'c.png'},,,,,,z\r\n\r\n")
    m = load_csv(csv, image_column="path", columns={"abnormal": "referable", "patient": "subject"})
    frame = m.frame
    assert frame["image"].tolist() == ["img/a.png", "img/b.png", "img/c.png"]
    assert frame["eye"].tolist() == ["L", "R", ""]
    assert frame["split"].tolist() == ["train", "test", ""]
    assert frame["patient"].tolist()[:2] == ["p1", "p1"]
    assert frame["patient"].iloc[2] == frame["id"].iloc[2]
    assert frame["id"].iloc[0] == f"{csv_root.name}-img-a"
    assert m.labels("abnormal").tolist() == [1, 0, -1]
    assert frame["site"].tolist() == ["x", "y", "z"]
    assert m.path(0, "mask_OD") == (csv_root / "masks" / "a_od.png").resolve()


@pytest.mark.parametrize("rows, line, message", [
    ("img/a.png,1\nimg/missing.png,0\n", 3, "does not exist"),
    ("img/a.png,1\n../outside.png,0\n", 3, "escapes the dataset root"),
    ("/etc/passwd,1\n", 2, "escapes the dataset root"),
    ("img/a.png,2\n", 2, r"abnormal is '?2'?; expected an integer in \[0, 1\]"),
    ("img/a.png,NaN\n", 2, "abnormal is 'NaN'"),
    ("img/a.png,yes\n", 2, "not a number"),
    ("img/a.png,1\n,0\n", 3, "image path is empty"),
    ("img/a.png,1\nimg/b.png,0\nimg/a.png,1\n", 4, "already on line 2"),
])
def test_csv_bad_rows_name_the_line(csv_root: Path, rows: str, line: int, message: str) -> None:
    csv = write(csv_root / "t.csv", "image,abnormal\n" + rows)
    with pytest.raises(DataError, match=message) as info:
        load_csv(csv)
    assert str(csv) in str(info.value) and f"line {line}:" in str(info.value)


def test_csv_duplicate_ids_name_the_line(csv_root: Path) -> None:
    csv = write(csv_root / "t.csv", "id,image\nx1,img/a.png\nx1,img/b.png\n")
    with pytest.raises(DataError, match="line 3: id 'x1' already on line 2"):
        load_csv(csv)


def test_csv_bad_id_and_eye_name_the_line(csv_root: Path) -> None:
    csv = write(csv_root / "t.csv", "id,image\nok,img/a.png\nnot ok,img/b.png\n")
    with pytest.raises(DataError, match="line 3: id 'not ok' is empty or not a safe name"):
        load_csv(csv)
    csv = write(csv_root / "t.csv", "image,eye\nimg/a.png,both\n")
    with pytest.raises(DataError, match="line 2: eye 'both' is not understood"):
        load_csv(csv)


def test_csv_missing_column(csv_root: Path) -> None:
    csv = write(csv_root / "t.csv", "file,abnormal\nimg/a.png,1\n")
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) \['image'\]") as info:
        load_csv(csv)
    assert "file" in str(info.value)
    csv = write(csv_root / "t.csv", "image,abnormal\nimg/a.png,1\n")
    with pytest.raises(DataError, match="referable"):
        load_csv(csv, columns={"abnormal": "referable"})


def test_csv_missing_mask_names_the_line(csv_root: Path) -> None:
    csv = write(csv_root / "t.csv", "image,mask_OD\nimg/a.png,masks/a_od.png\nimg/b.png,masks/nope.png\n")
    with pytest.raises(DataError, match="line 3: id .*: mask_OD file does not exist"):
        load_csv(csv)


def test_csv_unreadable_and_empty(csv_root: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_csv(csv_root / "none.csv")
    csv = write(csv_root / "t.csv", "image,abnormal\n")
    with pytest.raises(DataError, match="lists no images"):
        load_csv(csv)
    csv = write(csv_root / "t.csv", "image,abnormal\nimg/a.png,1,extra\n")
    with pytest.raises(DataError, match="not a readable CSV"):
        load_csv(csv)


# -- load_glob ---------------------------------------------------------------------------------
@pytest.fixture
def glob_root(tmp_path: Path) -> Path:
    for split in ("train", "test"):
        for n in ("01", "02"):
            png(tmp_path / split / "images" / f"{n}_img.png")
            png(tmp_path / split / "manual" / f"{n}_manual1.png", 255, mode="L")
    png(tmp_path / "test" / "second" / "01_manual2.png", 255, mode="L")
    return tmp_path


def test_glob_pairs_by_stem(glob_root: Path) -> None:
    m = load_glob(glob_root, image="*/images/*.png",
                  stem_regex=r"^(?P<folder>\w+)/images/(?P<stem>\d+)_",
                  masks={"mask_vessels": "{folder}/manual/{stem}_manual1.png",
                         "mask_vessels_2": "{folder}/second/{stem}_manual2.*"},
                  split="{folder}", optional=["mask_vessels_2"], prefix="toy")
    frame = m.frame.set_index("id")
    assert sorted(frame.index) == ["toy-test-01", "toy-test-02", "toy-train-01", "toy-train-02"]
    assert frame.loc["toy-train-02", "mask_vessels"] == "train/manual/02_manual1.png"
    assert frame.loc["toy-test-01", "mask_vessels_2"] == "test/second/01_manual2.png"
    assert frame.loc["toy-test-02", "mask_vessels_2"] == ""
    assert frame.loc["toy-test-01", "split"] == "test"


def test_glob_default_stem_and_patient_template(glob_root: Path) -> None:
    m = load_glob(glob_root / "train", image="images/*.png", patient="{stem}", prefix="p")
    assert m.ids == ["p-01_img", "p-02_img"]
    assert m.frame["patient"].tolist() == ["p-01_img", "p-02_img"]


def test_glob_errors(glob_root: Path) -> None:
    with pytest.raises(DataError, match="no mask_vessels for this image") as info:
        load_glob(glob_root, image="test/images/*.png", masks={"mask_vessels": "test/manual/{stem}.png"})
    assert "01_img.png" in str(info.value)
    with pytest.raises(DataError, match="matches no image"):
        load_glob(glob_root, image="*.tif")
    with pytest.raises(DataError, match="does not match stem_regex"):
        load_glob(glob_root, image="*/images/*.png", stem_regex=r"^train/")
    with pytest.raises(DataError, match="two images get the id"):
        load_glob(glob_root, image="*/images/*.png")
    with pytest.raises(ConfigError, match="placeholder"):
        load_glob(glob_root, image="train/images/*.png", masks={"mask_vessels": "{nope}.png"})
    with pytest.raises(ConfigError, match="unknown mask column"):
        load_glob(glob_root, image="train/images/*.png", masks={"mask_vessel": "{stem}.png"})
    with pytest.raises(DataError, match="matches 2 files"):
        load_glob(glob_root, image="train/images/01_img.png",
                  masks={"mask_vessels": "train/manual/*.png"})


# -- registry ----------------------------------------------------------------------------------
def test_registry_names_and_errors(csv_root: Path) -> None:
    for name in ("idrid", "drive", "stare", "rfmid", "eyepacs", "folder", "csv", "glob"):
        assert callable(SOURCES[name]) and SOURCES[name].__doc__
    with pytest.raises(ConfigError, match="known sources: .*csv.*drive.*glob"):
        load_source("kaggle")
    with pytest.raises(ConfigError, match="its options are"):
        load_source("folder", root=csv_root, colour="red")
    write(csv_root / "t.csv", "image\nimg/a.png\n")
    assert len(load_source("csv", csv=str(csv_root / "t.csv"))) == 1


def test_generic_images_are_real_files(csv_root: Path) -> None:
    m = load_glob(csv_root, image="img/*.png")
    assert all(m.path(r).is_file() for r in range(len(m)))
    assert np.array_equal(m.frame["split"].to_numpy(), np.array(["", "", ""], dtype=object))


def test_csv_relative_root_reads_its_images(csv_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset root given relative to the working directory (presets use ``../shared/data/...``)
    is not mistaken for a path escaping itself; ``..`` outside it still is."""
    write(csv_root / "t.csv", "image,abnormal\nimg/a.png,1\n")
    monkeypatch.chdir(csv_root.parent)
    relative_root = Path("..") / csv_root.parent.name / csv_root.name
    m = load_csv(relative_root / "t.csv", root=relative_root)
    assert m.frame["image"].tolist() == ["img/a.png"]
    write(csv_root / "u.csv", "image,abnormal\n../outside.png,1\n")
    with pytest.raises(DataError, match="escapes the dataset root"):
        load_csv(relative_root / "u.csv", root=relative_root)

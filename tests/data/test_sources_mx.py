"""The ``mx_fundus_oct`` source and the folder source's ``positive`` / ``patient_regex`` options:
crafted tiny tables (grouping through shared hashes, label mapping, fundus-OCT pairing, errors
naming the CSV line) and the real copies in ``../shared/data`` (counts from their SOURCE.md files,
no patient, linked group or image hash on two sides of a split)."""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

from retinassl.data.manifest import Manifest
from retinassl.data.sources import SOURCES, load_folder, load_source
from retinassl.data.sources.mx_fundus_oct import SAME_EYE_FOUND, load_mx_fundus_oct
from retinassl.data.splits import stratified_group_split
from retinassl.errors import ConfigError, DataError

HEADER = "name,image,patient,eye,dme,dr,sha1_original"
FUNDUS_ROWS = [  # line 2 onwards
    "0001_OD_f_1,fundus/0001_OD_f_1.jpg,0001,R,1,0,{a}",
    "0001_OI_f_1,fundus/0001_OI_f_1.jpg,0001,L,0,NPDR,{b}",
    "0002_OD_f_1,fundus/0002_OD_f_1.jpg,0002,R,1,PDR,{c}",
    "0003_OD_f_1,fundus/0003_OD_f_1.jpg,0003,R,0,-,{c}",      # same original as 0002's: linked
    "0004_od_f_1,fundus/0004_od_f_1.jpg,0004,,1,,{d}",         # blank eye (from the name), blank dr
    "0005_OI_f_1,fundus/0005_OI_f_1.jpg,0005,L,0,0,{e}",
]
OCT_ROWS = [
    "0001_OD_o_2,oct/0001_OD_o_2.jpg,0001,R,1,0,{f}",
    "0001_OD_o_1,oct/0001_OD_o_1.jpg,0001,R,1,0,{g}",
    "0003_OD_f_1,oct/0003_OD_f_1.jpg,0003,R,0,-,{h}",          # an OCT named like a fundus image
    "0005_OI_o_1,oct/0005_OI_o_1.jpg,0005,L,0,0,{i}",
    "0006_OI_o_1,oct/0006_OI_o_1.jpg,0006,L,0,-,{i}",          # links 0006 to 0005 (OCT table)
]
HASHES = {k: f"{i:040x}" for i, k in enumerate("abcdefghi", start=10)}


def write_mx(root: Path, fundus: list[str] | None = None, oct_rows: list[str] | None = None) -> Path:
    """A tiny copy of the mx_fundus_oct layout: the two tables and (empty) image files."""
    for folder in ("fundus", "oct"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for table, rows in (("fundus.csv", fundus or FUNDUS_ROWS), ("oct.csv", oct_rows or OCT_ROWS)):
        lines = [HEADER] + [r.format(**HASHES) for r in rows]
        (root / table).write_text("\n".join(lines) + "\n")
        for line in lines[1:]:
            image = root / line.split(",")[1]
            if ".." not in line.split(",")[1]:
                image.write_bytes(b"")
    return root


def by_name(manifest: Manifest) -> pd.DataFrame:
    return manifest.frame.set_index("name")


def missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- crafted tables -----------------------------------------------------------------------------
def test_labels_eyes_and_ids(tmp_path: Path) -> None:
    m = load_mx_fundus_oct(write_mx(tmp_path))
    f = by_name(m)
    assert list(f.index) == [r.split(",")[0] for r in FUNDUS_ROWS]
    assert f.loc["0001_OD_f_1", "id"] == "mx-fundus-0001_OD_f_1"
    assert f["dme"].tolist() == [1, 0, 1, 0, 1, 0]
    stage = f["dr_stage"].tolist()
    assert stage[:3] == [0, 1, 2] and stage[5] == 0
    assert missing(stage[3]) and missing(stage[4])            # '-' and blank: not graded, not 0
    dr_any = f["dr_any"].tolist()
    assert dr_any[:3] == [0, 1, 1] and dr_any[5] == 0 and missing(dr_any[3]) and missing(dr_any[4])
    assert f.loc["0004_od_f_1", "eye"] == "R"                  # from the lower-case 'od'
    assert f.loc["0002_OD_f_1", "sha1_original"] == HASHES["c"]
    assert f.loc["0002_OD_f_1", "patient_number"] == "0002"
    assert set(f["split"]) == {""}
    # the manifest's own accessors see the same labels (-1 = not graded)
    assert m.labels("dr_any").tolist() == [0, 1, 1, -1, -1, 0]


def test_groups_follow_shared_hashes_in_either_table(tmp_path: Path) -> None:
    root = write_mx(tmp_path)
    f = by_name(load_mx_fundus_oct(root))
    assert f.loc["0002_OD_f_1", "patient"] == f.loc["0003_OD_f_1", "patient"] == "mx-0002+0003"
    assert f.loc["0001_OD_f_1", "patient"] == f.loc["0001_OI_f_1", "patient"] == "mx-0001"
    assert f.loc["0005_OI_f_1", "patient"] == "mx-0005+0006"   # linked through the OCT table
    o = by_name(load_mx_fundus_oct(root, modality="oct"))
    assert o.loc["0006_OI_o_1", "patient"] == o.loc["0005_OI_o_1", "patient"] == "mx-0005+0006"
    assert o.loc["0003_OD_f_1", "patient"] == "mx-0002+0003"   # same group names in both modalities


def test_fundus_pairs_with_oct_of_same_patient_and_eye(tmp_path: Path) -> None:
    root = write_mx(tmp_path)
    f = by_name(load_mx_fundus_oct(root))
    assert f.loc["0001_OD_f_1", "oct_bscan"] == "oct/0001_OD_o_1.jpg"     # first by name
    assert f.loc["0001_OD_f_1", "oct_ids"] == "mx-oct-0001_OD_o_1;mx-oct-0001_OD_o_2"
    assert f.loc["0001_OI_f_1", "oct_bscan"] == ""                         # other eye: no OCT
    assert f.loc["0002_OD_f_1", "oct_bscan"] == ""       # linked group, but another patient number
    assert f.loc["0003_OD_f_1", "oct_bscan"] == "oct/0003_OD_f_1.jpg"
    o = by_name(load_mx_fundus_oct(root, modality="oct"))
    assert o.loc["0001_OD_o_2", "fundus_ids"] == "mx-fundus-0001_OD_f_1"
    assert o.loc["0006_OI_o_1", "fundus_ids"] == ""
    assert "oct_bscan" not in o.columns
    paired = load_mx_fundus_oct(root, require="oct_bscan")
    assert sorted(paired.frame["name"]) == ["0001_OD_f_1", "0003_OD_f_1", "0005_OI_f_1"]


def test_require_keeps_graded_rows(tmp_path: Path) -> None:
    root = write_mx(tmp_path)
    graded = load_mx_fundus_oct(root, require="dr_any")
    assert graded.frame["name"].tolist() == ["0001_OD_f_1", "0001_OI_f_1", "0002_OD_f_1",
                                             "0005_OI_f_1"]
    both = load_mx_fundus_oct(root, require=["dr_stage", "oct_bscan"])
    assert both.frame["name"].tolist() == ["0001_OD_f_1", "0005_OI_f_1"]


def test_split_keeps_groups_together_and_is_seeded(tmp_path: Path) -> None:
    root = write_mx(tmp_path)
    sizes = {"train": 0.5, "val": 0.25, "test": 0.25}
    splits = [by_name(load_mx_fundus_oct(root, split=sizes, seed=s, stratify="dme"))["split"]
              for s in range(12)]
    for split in splits:
        assert set(split) <= {"train", "val", "test"}
        assert split["0002_OD_f_1"] == split["0003_OD_f_1"]
        assert split["0001_OD_f_1"] == split["0001_OI_f_1"]
    again = by_name(load_mx_fundus_oct(root, split=[0.5, 0.25, 0.25], seed=3, stratify="dme"))["split"]
    assert again.equals(splits[3])
    assert len({tuple(s) for s in splits}) > 1                  # the seed is used


@pytest.mark.parametrize("line, row, problem", [
    (3, "0001_OI_f_1,fundus/0001_OI_f_1.jpg,0001,L,0,moderate,{b}", "dr is 'moderate'"),
    (3, "0001_OI_f_1,fundus/0001_OI_f_1.jpg,0001,L,2,0,{b}", "dme is '2'"),
    (3, "fundus one,fundus/0001_OI_f_1.jpg,0001,L,0,0,{b}", "is not <patient>_<OD|OI>"),
    (3, "0001_OI_f_1,fundus/0001_OI_f_1.jpg,0009,L,0,0,{b}", "patient is '0009'"),
    (3, "0001_OI_f_1,fundus/0001_OI_f_1.jpg,0001,R,0,0,{b}", "eye is 'R'"),
    (3, "0001_OI_f_1,fundus/0001_OI_f_1.jpg,0001,L,0,0,not-a-hash", "sha1_original is"),
    (3, "0001_OI_f_1,../outside.jpg,0001,L,0,0,{b}", "escapes the dataset root"),
    (3, "0001_OD_f_1,fundus/0001_OD_f_9.jpg,0001,R,0,0,{b}", "name '0001_OD_f_1' already on line 2"),
])
def test_malformed_row_names_csv_and_line(tmp_path: Path, line: int, row: str, problem: str) -> None:
    rows = list(FUNDUS_ROWS)
    rows[line - 2] = row
    root = write_mx(tmp_path, fundus=rows)
    with pytest.raises(DataError) as info:
        load_mx_fundus_oct(root)
    message = str(info.value)
    assert "fundus.csv" in message and f"line {line}:" in message and problem in message


def test_missing_image_and_missing_column(tmp_path: Path) -> None:
    root = write_mx(tmp_path)
    (root / "oct" / "0005_OI_o_1.jpg").unlink()
    with pytest.raises(DataError, match=r"oct\.csv: line 5: image file does not exist"):
        load_mx_fundus_oct(root)                                  # the paired table is checked too
    (root / "fundus.csv").write_text("name,image,patient,eye,dme\n")
    with pytest.raises(DataError, match=r"fundus\.csv: line 1: missing column\(s\) \['dr', "
                                        r"'sha1_original'\]"):
        load_mx_fundus_oct(root)


def test_option_errors(tmp_path: Path) -> None:
    root = write_mx(tmp_path)
    with pytest.raises(ConfigError, match="option 'root' is required"):
        load_mx_fundus_oct()
    with pytest.raises(ConfigError, match="option 'root' is required"):
        load_source("mx_fundus_oct", modality="oct")
    with pytest.raises(ConfigError, match="option 'modality' is 'ir'"):
        load_mx_fundus_oct(root, modality="ir")
    with pytest.raises(ConfigError, match=r"option 'require' names \['dr'\]"):
        load_mx_fundus_oct(root, require="dr")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_mx_fundus_oct(root, split={"train": 0.5, "test": 0.6})
    with pytest.raises(ConfigError, match=r"option 'split' names \['holdout'\]"):
        load_mx_fundus_oct(root, split={"train": 0.5, "holdout": 0.5})
    with pytest.raises(DataError, match="dataset folder does not exist"):
        load_mx_fundus_oct(tmp_path / "nowhere")
    assert SOURCES["mx_fundus_oct"] is load_mx_fundus_oct


def test_data_inspect_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retinassl.cli import app

    root = write_mx(tmp_path)
    result = CliRunner().invoke(app, ["data", "inspect", "mx_fundus_oct", "-o", f"root={root}"])
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output and "oct_bscan: 3 files" in result.output
    assert "patients: 4" in result.output                       # 0001, 0002+0003, 0004, 0005+0006


# -- the folder source's positive class and patient grouping ------------------------------------
def odir_folder(root: Path) -> Path:
    for name in ("normal/12_left.jpg", "normal/12_right.jpg", "normal/40_left.jpg",
                 "glaucoma/7_left.jpg", "glaucoma/7_right.jpg", "glaucoma/40_right.jpg",
                 "glaucoma/Glaucoma_001.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_folder_positive_class_is_explicit(tmp_path: Path) -> None:
    root = odir_folder(tmp_path / "eyes")
    with pytest.raises(ConfigError, match=r"two classes \['glaucoma', 'normal'\].*positive"):
        load_folder(root)                                       # which is positive would be a guess
    m = load_folder(root, positive="Glaucoma")
    f = m.frame.set_index("id")
    assert f.loc["eyes-glaucoma-7_left", "abnormal"] == 1
    assert f.loc["eyes-normal-12_left", "abnormal"] == 0
    assert "class_index" not in f.columns
    with pytest.raises(ConfigError, match=r"names no class folder .*\['glaucoma', 'normal'\]"):
        load_folder(root, positive="cataract")
    with pytest.raises(ConfigError, match="names every class"):
        load_folder(root, positive=["normal", "glaucoma"])


def test_folder_patient_regex_groups_left_and_right(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    root = odir_folder(tmp_path / "eyes")
    with caplog.at_level(logging.WARNING):
        m = load_folder(root, positive="glaucoma",
                        patient_regex=r"^(?P<patient>\d+)_(?P<eye>left|right)$")
    f = m.frame.set_index("id")
    assert f.loc["eyes-normal-12_left", "patient"] == f.loc["eyes-normal-12_right", "patient"] == "eyes-12"
    assert f.loc["eyes-normal-40_left", "patient"] == f.loc["eyes-glaucoma-40_right", "patient"]
    assert f.loc["eyes-normal-12_left", "eye"] == "L" and f.loc["eyes-glaucoma-7_right", "eye"] == "R"
    assert f.loc["eyes-glaucoma-Glaucoma_001", "patient"] == "eyes-glaucoma-Glaucoma_001"
    assert "does not match 1 of 7" in caplog.text
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_folder(root, positive="glaucoma", patient_regex="([")
    with pytest.raises(DataError, match="group 'eye' is 'le'"):
        load_folder(root, positive="glaucoma", patient_regex=r"^(?P<patient>\d+)_(?P<eye>le)")


# -- real data ----------------------------------------------------------------------------------
def raw_table(root: Path, name: str) -> list[dict]:
    with open(root / name, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_no_leak_across_splits(frame: pd.DataFrame) -> None:
    for column in ("patient", "patient_number", "sha1_original"):
        sides = frame.groupby(column)["split"].nunique()
        assert (sides == 1).all(), f"{column} {list(sides[sides > 1].index)[:3]} crosses splits"


def test_real_fundus_counts_and_pairs() -> None:
    root = shared_dataset("mx_fundus_oct")
    m = load_source("mx_fundus_oct", root=str(root))
    f = m.frame
    assert len(f) == 921 and f["patient_number"].nunique() == 698
    assert f["dme"].value_counts().to_dict() == {1: 626, 0: 295}
    assert f["dr_stage"].value_counts().to_dict() == {0: 242, 1: 48, 2: 32}
    assert f["dr_stage"].isna().sum() == 598 + 1                  # '-' and the one blank cell
    assert f["dr_any"].value_counts().to_dict() == {0: 242, 1: 80}
    # 239 eyes with both modalities, counted independently from the raw tables
    fundus_raw, oct_raw = raw_table(root, "fundus.csv"), raw_table(root, "oct.csv")
    oct_eyes = {(r["patient"], r["eye"]) for r in oct_raw}
    both = {(r["patient"], r["eye"]) for r in fundus_raw} & oct_eyes
    assert len(both) == 239
    paired = f[f["oct_bscan"] != ""]
    assert paired.groupby(["patient_number", "eye"]).ngroups == 239
    for _, row in paired.iterrows():
        number, code = re.match(r"oct/(\d+)_(OD|OI)_", row["oct_bscan"], re.I).groups()
        assert (number, {"OD": "R", "OI": "L"}[code.upper()]) == (row["patient_number"], row["eye"])
        assert (root / row["oct_bscan"]).is_file()
    # patients sharing an original image are one group (SOURCE.md's example 0346/0348)
    for sha1 in {r["sha1_original"] for r in fundus_raw}:
        numbers = {r["patient"] for r in fundus_raw if r["sha1_original"] == sha1}
        assert f[f["patient_number"].isin(numbers)]["patient"].nunique() == 1
    assert f.loc[f["patient_number"] == "0346", "patient"].iloc[0] == "mx-0346+0348"
    # re-encoded copies and same-eye photographs under other numbers (confirmed by eye)
    group = dict(zip(f["patient_number"], f["patient"]))
    assert group["0002"] == "mx-0002+0473" and group["0038"] == group["0579"] == "mx-0038+0535+0579"
    assert all(group[a] == group[b] for a, b, _ in SAME_EYE_FOUND)


def test_real_oct_counts() -> None:
    root = shared_dataset("mx_fundus_oct")
    f = load_source("mx_fundus_oct", root=str(root), modality="oct").frame
    assert len(f) == 675 and f["patient_number"].nunique() == 499
    assert f["dme"].value_counts().to_dict() == {0: 586, 1: 89}
    assert f["dr_stage"].value_counts().to_dict() == {0: 216, 1: 65, 2: 31}
    assert f["dr_stage"].isna().sum() == 363
    assert (f["fundus_ids"] != "").groupby([f["patient_number"], f["eye"]]).any().sum() == 239


@pytest.mark.parametrize("modality, require", [("fundus", None), ("fundus", "dr_any"),
                                               ("oct", None), ("oct", "dr_any")])
def test_real_splits_never_separate_linked_patients(modality: str, require: str | None) -> None:
    root = shared_dataset("mx_fundus_oct")
    m = load_source("mx_fundus_oct", root=str(root), modality=modality, require=require,
                    split={"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    f = m.frame
    assert set(f["split"]) == {"train", "val", "test"}
    assert_no_leak_across_splits(f)
    share = f["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.6) < 0.08 and abs(share["test"] - 0.2) < 0.08
    if require == "dr_any":
        assert len(f) == (322 if modality == "fundus" else 312)
        for split in ("train", "val", "test"):                  # stratified: both classes everywhere
            assert set(f.loc[f["split"] == split, "dr_any"]) == {0, 1}


def test_real_eye_disease_4class_folder() -> None:
    root = shared_dataset("eye_disease_4class")
    m = load_source("folder", root=str(root), positive="glaucoma",
                    patient_regex=r"^(?P<patient>_?\d+)_(?:(?P<eye>left|right)$)?")
    f = m.frame
    assert f["abnormal"].value_counts().to_dict() == {0: 1074, 1: 1007}
    assert (f.loc[f["class_name"] == "glaucoma", "abnormal"] == 1).all()
    # the ODIR id of every <id>_<left|right> file, parsed here without the regex
    stems = f["image"].map(lambda p: Path(p).stem)
    odir = stems.map(lambda s: s.split("_")[0] if s.endswith(("_left", "_right")) else None)
    for key, patients in f.groupby(odir)["patient"]:
        assert patients.nunique() == 1, key                       # left and right: one patient
    splits = stratified_group_split(f["abnormal"].to_numpy(), f["patient"].to_numpy(),
                                    {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    sides = pd.Series(splits).groupby(odir.to_numpy()).nunique()
    assert (sides == 1).all()
    assert np.isin(splits, ["train", "val", "test"]).all()


def smooth_fundus(seed: int, size: int = 96) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 disc of smooth random texture (a stand-in fundus photograph)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 220, size=(6, 6, 3)).astype(np.float32)
    from PIL import Image

    texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size),
                                                                          Image.BICUBIC))
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size * 0.45) ** 2
    return (texture * disc[..., None]).astype(np.uint8)


def test_folder_link_duplicates_joins_copies_under_unrelated_names(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "eyes"
    for folder in ("normal", "glaucoma"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(smooth_fundus(0)).save(root / "glaucoma" / "12_left.png")
    copy = Image.fromarray(smooth_fundus(0)).resize((80, 80), Image.BICUBIC)
    copy.save(root / "glaucoma" / "_3_998877.jpg", quality=80)        # re-encoded, renamed
    Image.fromarray(smooth_fundus(1)).save(root / "normal" / "12_right.png")
    Image.fromarray(smooth_fundus(2)).save(root / "normal" / "40_left.png")
    regex = r"^(?P<patient>_?\d+)_(?:(?P<eye>left|right)$)?"
    plain = load_folder(root, positive="glaucoma", patient_regex=regex).frame.set_index("id")
    assert plain.loc["eyes-glaucoma-3_998877", "patient"] == "eyes-_3"
    linked = load_folder(root, positive="glaucoma", patient_regex=regex,
                         link_duplicates=True).frame.set_index("id")
    assert linked.loc["eyes-glaucoma-3_998877", "patient"] == linked.loc["eyes-glaucoma-12_left",
                                                                          "patient"] == "eyes-12"
    assert linked.loc["eyes-normal-12_right", "patient"] == "eyes-12"  # by name, as before
    assert linked.loc["eyes-normal-40_left", "patient"] == "eyes-40"   # unrelated: untouched

"""DRIVE and STARE sources against their dataset notes, masks at their image's size, and DRIVE
described through the generic glob source giving the same pairing as the DRIVE module."""

from __future__ import annotations

import pytest
from conftest import shared_dataset

from retinassl.data.imageio import image_size, read_mask
from retinassl.data.manifest import Manifest
from retinassl.data.sources import load_drive, load_glob, load_stare
from retinassl.errors import DataError

PAIRING = ["id", "image", "split", "mask_vessels", "mask_vessels_2", "mask_fov"]


def assert_masks_fit(manifest: Manifest, rows: list[int], columns: tuple[str, ...]) -> None:
    for r in rows:
        size = image_size(manifest.path(r))
        for column in columns:
            path = manifest.path(r, column)
            if path is not None:
                mask = read_mask(path, expected_size=size)
                assert mask.shape == (size[1], size[0]) and 0 < mask.mean() < 1


@pytest.mark.realdata
def test_drive_counts_and_masks() -> None:
    m = load_drive(shared_dataset("drive"))
    f = m.frame
    assert len(m) == 40 and (f["split"] == "train").sum() == 20 and (f["split"] == "test").sum() == 20
    assert (f["mask_vessels_2"] != "").sum() == 20
    assert (f.loc[f["split"] == "train", "mask_vessels_2"] == "").all()
    assert (f["mask_fov"] != "").all() and (f["mask_vessels"] != "").all()
    row = f.set_index("id").loc["drive-test-07"]
    assert (row["image"], row["mask_vessels"], row["mask_vessels_2"], row["mask_fov"]) == (
        "test/images/07_test.tif", "test/1st_manual/07_manual1.gif",
        "test/2nd_manual/07_manual2.gif", "test/mask/07_test_mask.gif")
    assert_masks_fit(m, [0, 39], ("mask_vessels", "mask_vessels_2", "mask_fov"))


@pytest.mark.realdata
def test_drive_through_glob_gives_the_same_pairing() -> None:
    root = shared_dataset("drive")
    generic = load_glob(
        root, image="*/images/*.tif", stem_regex=r"^(?P<folder>training|test)/images/(?P<stem>\d+)_",
        split="{folder}", prefix="drive", optional=["mask_vessels_2"],
        masks={"mask_vessels": "{folder}/1st_manual/{stem}_manual1.gif",
               "mask_vessels_2": "{folder}/2nd_manual/{stem}_manual2.gif",
               "mask_fov": "{folder}/mask/{stem}_{folder}_mask.gif"})
    specific = load_drive(root)

    def table(m: Manifest) -> list[tuple]:
        return sorted(map(tuple, m.frame[PAIRING].fillna("").to_numpy().tolist()))

    assert table(generic) == table(specific)


@pytest.mark.realdata
def test_stare_originals_and_resized_flag() -> None:
    root = shared_dataset("stare")
    m = load_stare(root)
    f = m.frame
    assert len(m) == 16 and (f["resized"] == 0).all()
    assert (f["mask_fov"] == "").all() and (f["split"] == "").all()
    assert f.set_index("id").loc["stare-im0002", "mask_vessels"] == "labels-ah/im0002.ah.ppm.gz"
    assert_masks_fit(m, [0, 15], ("mask_vessels",))
    assert image_size(m.path(0)) == (700, 605)
    both = load_stare(root, include_resized=True)
    assert len(both) == 20 and int(both.frame["resized"].sum()) == 4
    resized = both.frame.index[both.frame["resized"] == 1]
    assert both.frame.loc[resized, "image"].str.startswith("resized_512_by_repo_author/").all()
    # the redistributor resized the labels with interpolation: not binary any more (documented)
    with pytest.raises(DataError, match="mask is not binary"):
        read_mask(both.path(int(resized[0]), "mask_vessels"))


@pytest.mark.realdata
@pytest.mark.slow
def test_drive_and_stare_all_masks_fit() -> None:
    drive = load_drive(shared_dataset("drive"))
    assert_masks_fit(drive, list(range(len(drive))), ("mask_vessels", "mask_vessels_2", "mask_fov"))
    stare = load_stare(shared_dataset("stare"))
    assert_masks_fit(stare, list(range(len(stare))), ("mask_vessels",))


def test_missing_folders_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match="training/images folder is missing"):
        load_drive(tmp_path)
    with pytest.raises(DataError, match="stare-images folder is missing"):
        load_stare(tmp_path)

"""OCT readers: HEYEX .vol/.xml fixtures (skipped without ../shared/data), DICOM exports written by
the tests (round trip, tolerated layouts, bad input), NumPy/TIFF stacks with sidecars (including the
synthetic generator's on-disk volumes)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import shared_dataset

from retinassl.errors import DataError
from retinassl.oct.dicom_write import write_oct_dicom
from retinassl.oct.identity import patient_key
from retinassl.oct.read import read_volume

FIXTURES = "oct_format_fixtures_eyepy"


# -- HEYEX (eyepy) ----------------------------------------------------------------------------------
def test_heyex_vol_fixture():
    path = shared_dataset(FIXTURES) / "heyex_vol" / "test_volume.vol"
    v = read_volume(path)
    assert v.format == "heyex-vol" and v.shape == (10, 40, 50) and v.bscans.dtype == np.uint8
    np.testing.assert_allclose(v.spacing_mm, (0.0314444, 0.003872, 0.011819), rtol=1e-5)
    assert v.laterality == "R" and v.acquisition_date == "2000-01-01"
    assert v.localizer is not None and v.localizer.shape == (50, 50)
    assert v.localizer_spacing_mm == pytest.approx((0.0118, 0.0118))
    # B-scan 0 starts at (1.513, 6.807) mm on the localizer: pixel centres = mm / scale - 0.5
    np.testing.assert_allclose(v.bscan_start[0], (1.513 / 0.0118 - 0.5, 6.807 / 0.0118 - 0.5))
    np.testing.assert_allclose(v.bscan_end[-1], (7.564 / 0.0118 - 0.5, 6.524 / 0.0118 - 0.5))
    assert v.patient_key.startswith("pk-") and v.layers == {}


def test_heyex_xml_fixture_layers_and_fovea():
    path = shared_dataset(FIXTURES) / "heyex_xml" / "test_volume" / "test_dummy.xml"
    v = read_volume(path)
    assert v.format == "heyex-xml" and v.shape == (10, 40, 50)
    assert {"ILM", "BM"} <= set(v.layers)
    ilm, bm = v.layers["ILM"], v.layers["BM"]
    assert ilm.shape == (10, 50) and np.isnan(ilm[0, :2]).all()       # 3e+38 = missing -> NaN
    np.testing.assert_allclose(ilm[0, 2:40], 9.6, rtol=1e-6)
    np.testing.assert_allclose(bm[0, 2:40], 30.2, rtol=1e-6)
    assert v.fovea == (370.0, 386.0)                                   # ThicknessGrid/CenterPos
    # the XML names the same dummy patient as the .vol: same salted key, and no name in the output
    vol = read_volume(path.parents[2] / "heyex_vol" / "test_volume.vol")
    assert v.patient_key == vol.patient_key
    text = json.dumps(v.describe())
    for word in ("Doe", "John", "Study-01"):
        assert word not in text


# -- DICOM -------------------------------------------------------------------------------------------
def test_dicom_round_trip(dicom_export):
    folder, volume, _ = dicom_export
    v = read_volume(folder / "oct.dcm")                 # the infrared image is found beside it
    assert v.format == "dicom" and v.shape == volume.shape
    np.testing.assert_array_equal(v.bscans, volume.bscans)
    np.testing.assert_allclose(v.spacing_mm, volume.spacing_mm, rtol=1e-6)
    np.testing.assert_allclose(v.bscan_start, volume.bscan_start, atol=1e-3)
    np.testing.assert_allclose(v.bscan_end, volume.bscan_end, atol=1e-3)
    np.testing.assert_array_equal(v.localizer, volume.localizer)
    assert v.localizer_spacing_mm == pytest.approx(volume.localizer_spacing_mm)
    assert v.laterality == volume.laterality and v.acquisition_date == "2020-01-01"
    assert v.patient_key == patient_key("ID-98765-XQ") and v.warnings == []
    assert read_volume(folder).shape == volume.shape     # a folder: its OCT file


def test_dicom_tolerated_layouts(tmp_path, tiny_volumes):
    volume, _ = tiny_volumes[0]
    # no SliceThickness: the B-scan spacing comes from the frame positions and the IR pixel size
    oct_path, ir_path = write_oct_dicom(tmp_path / "a", volume, omit=["SliceThickness"])
    v = read_volume(oct_path)
    assert v.spacing_mm[0] == pytest.approx(volume.spacing_mm[0], rel=1e-3)
    # the infrared image elsewhere: a warning, or given explicitly
    oct_path, ir_path = write_oct_dicom(tmp_path / "c", volume)
    moved = tmp_path / "ir_elsewhere.dcm"
    shutil.move(ir_path, moved)
    assert "no infrared image" in read_volume(oct_path).warnings[0]
    assert read_volume(oct_path, infrared=moved).localizer is not None
    # a header spacing that contradicts the frame positions: the positions win, with a warning
    wrong = type(volume)(**{**volume.__dict__, "spacing_mm": (0.0039,) + tuple(volume.spacing_mm[1:])})
    v = read_volume(write_oct_dicom(tmp_path / "d", wrong)[0])
    assert v.spacing_mm[0] == pytest.approx(volume.spacing_mm[0], rel=1e-3)
    assert "disagrees with the B-scan positions" in v.warnings[0]
    # no frame positions: a regular raster is assumed later; the volume still reads
    oct_path, _ = write_oct_dicom(tmp_path / "b", volume, omit=["positions"])
    assert not read_volume(oct_path).has_positions


@pytest.mark.parametrize("omit, frames, message", [
    (["PixelData"], None, "no pixel data"),
    (["PixelSpacing"], None, "no pixel spacing"),
    ([], 7, "header says 7 frames"),
    (["SliceThickness", "positions"], None, "no B-scan spacing"),
])
def test_dicom_bad_input_names_the_file(tmp_path, tiny_volumes, omit, frames, message):
    volume, _ = tiny_volumes[0]
    oct_path, _ = write_oct_dicom(tmp_path, volume, omit=omit, number_of_frames=frames)
    with pytest.raises(DataError) as err:
        read_volume(oct_path)
    assert message in str(err.value) and str(oct_path) in str(err.value)


def test_not_dicom_and_photo_instead_of_oct(tmp_path, tiny_volumes):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match="not a DICOM file") as err:
        read_volume(bad)
    assert str(bad) in str(err.value)
    _, ir_path = write_oct_dicom(tmp_path / "x", tiny_volumes[0][0])
    with pytest.raises(DataError, match="fundus photograph"):
        read_volume(ir_path)
    other = tmp_path / "scan.abc"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown OCT format"):
        read_volume(other)
    with pytest.raises(DataError, match="does not exist"):
        read_volume(tmp_path / "missing.vol")


# -- stacks --------------------------------------------------------------------------------------------
def test_synthetic_dataset_volume_reads_as_a_stack(tmp_path):
    from retinassl.data.synthetic import generate_dataset

    manifest = generate_dataset(tmp_path, 1, size=64, with_oct=True, oct_shape=(5, 48, 32), ir_size=32)
    v = read_volume(manifest.path(0, "oct_volume"))
    assert v.format == "stack" and v.shape == (5, 48, 32) and v.laterality == "R"
    # positions are on the infrared image; its affine maps them back to the sidecar's fundus ones
    ref = json.loads(manifest.path(0, "oct_volume").with_suffix(".json").read_text())
    aff = np.asarray(ref["ir_image"]["affine"])
    back = v.bscan_start @ aff[:, :2].T + aff[:, 2]
    np.testing.assert_allclose(back, np.asarray(ref["bscan_start"]), atol=1e-9)
    assert set(v.layers) >= {"ILM", "BM"} and v.fovea is not None
    assert v.localizer_spacing_mm == pytest.approx((ref["ir_image"]["field_mm"] / 32,) * 2)


def test_tiff_stack_and_bad_sidecars(tmp_path):
    import tifffile

    stack = (np.arange(3 * 20 * 16) % 251).astype(np.uint8).reshape(3, 20, 16)
    tifffile.imwrite(tmp_path / "scan.tif", stack, photometric="minisblack")
    with pytest.raises(DataError, match="no spacing sidecar"):
        read_volume(tmp_path / "scan.tif")
    (tmp_path / "scan.json").write_text(json.dumps({"eye": "OS"}))
    with pytest.raises(DataError, match="no spacing_mm"):
        read_volume(tmp_path / "scan.tif")
    (tmp_path / "scan.json").write_text(json.dumps({"spacing_mm": [0.1, 0.004, 0.01], "eye": "OS",
                                                    "shape": [4, 20, 16]}))
    with pytest.raises(DataError, match="B-scan count or size disagrees"):
        read_volume(tmp_path / "scan.tif")
    (tmp_path / "scan.json").write_text(json.dumps({"spacing_mm": [0.1, 0.004, 0.01], "eye": "OS",
                                                    "patient_id": "ID-98765-XQ"}))
    v = read_volume(tmp_path / "scan.tif")
    np.testing.assert_array_equal(v.bscans, stack)
    assert v.laterality == "L" and v.patient_key == patient_key("ID-98765-XQ")
    assert not v.has_positions


def test_stack_annotations_as_masks_or_polylines(tmp_path, tiny_volumes):
    from retinassl.oct.layers import boundaries_to_labels, rows_to_polylines

    volume, _ = tiny_volumes[0]
    n, depth, width = volume.shape
    np.save(tmp_path / "scan.npy", volume.bscans)
    truth = np.stack([volume.layers["ILM"], volume.layers["BM"]])            # (2, n, width)
    masks = np.stack([boundaries_to_labels(truth[:, i], depth) for i in range(n)])
    np.save(tmp_path / "labels.npy", masks)
    (tmp_path / "scan.json").write_text(json.dumps({
        "spacing_mm": list(volume.spacing_mm), "labels": "labels.npy", "boundary_names": ["ILM", "BM"]}))
    v = read_volume(tmp_path / "scan.npy")
    assert np.abs(v.layers["BM"] - volume.layers["BM"]).max() <= 0.5 + 1e-6   # masks: half a pixel
    lines = {name: [[line.tolist() for line in rows_to_polylines(volume.layers[name][i])]
                    for i in range(n)] for name in ("ILM", "BM")}
    (tmp_path / "scan.json").write_text(json.dumps({"spacing_mm": list(volume.spacing_mm),
                                                    "polylines": lines}))
    v = read_volume(tmp_path / "scan.npy")
    np.testing.assert_allclose(v.layers["ILM"], volume.layers["ILM"], atol=1e-5)

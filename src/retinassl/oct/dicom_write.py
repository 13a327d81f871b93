"""Write an :class:`~retinassl.oct.volume.OCTVolume` as a Spectralis-like DICOM export: an
Ophthalmic Tomography multi-frame file and an Ophthalmic Photography (infrared) file, laid out the
way :mod:`retinassl.oct.dicom` reads them (shared pixel measures, one frame location per B-scan
referencing the infrared image).

For tests, the demo and benchmarks: real exports come from the device. ``identifiers`` writes
chosen patient attributes (e.g. a known PatientName) so that a test can check they never reach any
output; ``omit`` and ``number_of_frames`` make deliberately broken files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from retinassl.atomic import atomic_path
from retinassl.oct.dicom import OCT_SOP_CLASS, OP_SOP_CLASSES
from retinassl.oct.volume import OCTVolume

OMITTABLE = ("PixelData", "PixelSpacing", "SliceThickness", "positions", "infrared")


def _base(sop_class: str, modality: str, uid_root: str, index: int, study_uid: str,
          identifiers: Mapping[str, str], volume: OCTVolume):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = f"{uid_root}.{index}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{uid_root}.{index}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = f"{uid_root}.{index}.1"
    ds.Modality = modality
    ds.Manufacturer = "Heidelberg Engineering"
    ds.ImageLaterality = volume.laterality or "U"
    if volume.acquisition_date:
        ds.StudyDate = volume.acquisition_date.replace("-", "")
        ds.ContentDate = ds.StudyDate
    for keyword, value in identifiers.items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def write_oct_dicom(directory: str | Path, volume: OCTVolume, *,
                    identifiers: Mapping[str, str] | None = None, omit: Iterable[str] = (),
                    number_of_frames: int | None = None, uid_root: str = "1.2.826.0.1.3680043.10.1")\
        -> tuple[Path, Path | None]:
    """Write ``oct.dcm`` and (with a localizer) ``ir.dcm`` into ``directory``.

    Args:
        directory: output folder (created).
        volume: uint8 B-scans, spacing, positions on the localizer (pixel centres), localizer.
        identifiers: DICOM keywords -> values (``PatientName``, ``PatientID``, ``PatientBirthDate``,
            ``AccessionNumber``, ``InstitutionName``...).
        omit: parts to leave out (:data:`OMITTABLE`): ``PixelData``, ``PixelSpacing``,
            ``SliceThickness``, ``positions`` (frame locations), ``infrared`` (no IR file).
        number_of_frames: write this NumberOfFrames instead of the true count.
        uid_root: prefix of the UIDs written.

    Returns:
        ``(oct_path, ir_path or None)``.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    omit = set(omit)
    unknown = omit - set(OMITTABLE)
    if unknown:
        raise ValueError(f"cannot omit {sorted(unknown)}; choose from {OMITTABLE}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    identifiers = dict(identifiers or {})
    study = f"{uid_root}.9"
    n, depth, width = volume.shape
    ir_path = None
    ir_uid = f"{uid_root}.2"
    if volume.localizer is not None and "infrared" not in omit:
        ir = _base(OP_SOP_CLASSES[0], "OP", uid_root, 2, study, identifiers, volume)
        image = np.ascontiguousarray(volume.localizer if volume.localizer.ndim == 2
                                     else volume.localizer.mean(axis=2), dtype=np.uint8)
        ir.Rows, ir.Columns = image.shape
        if volume.localizer_spacing_mm is not None:
            ir.PixelSpacing = [f"{v:.8g}" for v in volume.localizer_spacing_mm]
        ir.PixelData = image.tobytes()
        ir_path = directory / "ir.dcm"
        with atomic_path(ir_path) as tmp:
            ir.save_as(str(tmp), enforce_file_format=True)
    ds = _base(OCT_SOP_CLASS, "OPT", uid_root, 1, study, identifiers, volume)
    ds.NumberOfFrames = int(number_of_frames if number_of_frames is not None else n)
    ds.Rows, ds.Columns = depth, width
    measures = Dataset()
    if "PixelSpacing" not in omit:
        measures.PixelSpacing = [f"{volume.spacing_mm[1]:.8g}", f"{volume.spacing_mm[2]:.8g}"]
    if "SliceThickness" not in omit:
        measures.SliceThickness = f"{volume.spacing_mm[0]:.8g}"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for i in range(n):
        item = Dataset()
        if "positions" not in omit and volume.has_positions:
            loc = Dataset()
            loc.ReferencedSOPClassUID = OP_SOP_CLASSES[0]
            loc.ReferencedSOPInstanceUID = ir_uid
            s, e = volume.bscan_start[i], volume.bscan_end[i]  # type: ignore[index]
            loc.ReferenceCoordinates = [float(s[1] + 0.5), float(s[0] + 0.5),
                                        float(e[1] + 0.5), float(e[0] + 0.5)]
            loc.OphthalmicImageOrientation = "LINEAR"
            item.OphthalmicFrameLocationSequence = Sequence([loc])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    if "PixelData" not in omit:
        ds.PixelData = np.ascontiguousarray(volume.bscans, dtype=np.uint8).tobytes()
    oct_path = directory / "oct.dcm"
    with atomic_path(oct_path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return oct_path, ir_path

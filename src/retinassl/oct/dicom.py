"""Heidelberg Spectralis DICOM exports (Ophthalmic Tomography multi-frame + infrared image) read
with pydicom into an :class:`~retinassl.oct.volume.OCTVolume`.

A Spectralis volume export is (at least) two DICOM files: the OCT volume, an Ophthalmic Tomography
Image (SOP class 1.2.840.10008.5.1.4.1.1.77.1.5.4, Modality ``OPT``) whose frames are the B-scans,
and the infrared/SLO fundus image the scan was placed on, an Ophthalmic Photography image (Modality
``OP``), in its own file. Exports differ in where they put the geometry, so each value is looked
for in several places, in this order.

Attributes read from the OCT file
---------------------------------
- pixels: ``PixelData`` (7FE0,0010) with ``Rows`` (0028,0010) = depth, ``Columns`` (0028,0011) =
  A-scans, ``NumberOfFrames`` (0028,0008) = B-scans, ``BitsAllocated`` (0028,0100),
  ``SamplesPerPixel`` (0028,0002); decoded by pydicom (uncompressed or any codec pydicom has).
- axial and lateral spacing: ``PixelSpacing`` (0028,0030) = [row spacing (axial), column spacing
  (lateral)] in mm, from the ``PixelMeasuresSequence`` (0028,9110) of the
  ``SharedFunctionalGroupsSequence`` (5200,9229), else of the first item of the
  ``PerFrameFunctionalGroupsSequence`` (5200,9230), else the top-level attribute.
- B-scan spacing: ``SliceThickness`` (0018,0050) in the same three places, else
  ``SpacingBetweenSlices`` (0018,0088), else the mean distance between consecutive B-scan start
  points on the infrared image times its pixel spacing; when both exist and differ by more than
  10 %, the positions win (with a warning: exports differ in what they put in SliceThickness).
- B-scan positions: per frame, ``OphthalmicFrameLocationSequence`` (0022,0031) item 0:
  ``ReferenceCoordinates`` (0022,0032) = [row, column] of the first A-scan then of the last A-scan on
  the referenced image (DICOM image-relative coordinates: 0, 0 is the top-left corner of the top-left
  pixel; converted here to pixel-centre coordinates by subtracting 0.5), and its
  ``ReferencedSOPInstanceUID`` (0008,1155): the infrared image.
- laterality: ``ImageLaterality`` (0020,0062), else ``Laterality`` (0020,0060), else
  ``FrameLaterality`` (0020,9072) of the shared ``FrameAnatomySequence`` (0020,9071).
- date: ``AcquisitionDateTime`` (0008,002A), else ``ContentDate`` (0008,0023), ``SeriesDate``
  (0008,0021), ``StudyDate`` (0008,0020).
- patient key: ``PatientID`` (0010,0020), ``PatientName`` (0010,0010), ``PatientBirthDate``
  (0010,0030), read only to be hashed (:func:`retinassl.oct.identity.patient_key`). No other
  identifying attribute is read, and no dataset is ever printed (a pydicom dataset's text form
  would show them).
- the infrared image's UID: the frame locations above, else ``ReferencedImageSequence``
  (0008,1140) ``ReferencedSOPInstanceUID``.

The infrared image
------------------
Given explicitly, or found among the other DICOM files in the OCT file's folder: the one whose
``SOPInstanceUID`` (0008,0018) is the referenced UID, else (no reference) the only ``OP`` image of the
same ``StudyInstanceUID`` (0020,000D). From it: ``PixelData``, ``PixelSpacing`` (top level or shared
pixel measures) = [row, column] mm per pixel. A colour image is kept as RGB.

Bad input raises :class:`~retinassl.errors.DataError` naming the file: not DICOM, no pixel data, no
spacing, a frame count that disagrees with the pixel data or the per-frame sequence, undecodable
pixels. Problems that do not stop processing (no infrared image, positions off the image) are listed
in ``OCTVolume.warnings``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from retinassl.errors import DataError
from retinassl.oct.identity import patient_key
from retinassl.oct.volume import OCTVolume, iso_date, laterality_code

log = logging.getLogger(__name__)

OCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"      # Ophthalmic Tomography Image Storage
OP_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.77.1.5.1",   # Ophthalmic Photography 8 Bit
                  "1.2.840.10008.5.1.4.1.1.77.1.5.2")   # Ophthalmic Photography 16 Bit


def read_dataset(path: Path, header_only: bool = False) -> Any:
    """A pydicom dataset (only the header with ``header_only``); DataError naming the file when it
    is not DICOM or unreadable. Never print the result: it holds the patient attributes."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except InvalidDicomError:
        raise DataError("not a DICOM file (no DICM preamble)", path=path) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"unreadable DICOM file ({type(exc).__name__})", path=path) from None


def is_dicom(path: str | Path) -> bool:
    """True when the file starts with the DICOM preamble (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _first(seq_owner: Any, keyword: str) -> Any:
    """Item 0 of a sequence attribute, or None."""
    seq = getattr(seq_owner, keyword, None)
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _measure(ds: Any, keyword: str) -> Any:
    """``keyword`` from the shared pixel measures, the first frame's, or the top level."""
    for group_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        group = _first(ds, group_kw)
        measures = _first(group, "PixelMeasuresSequence") if group is not None else None
        value = getattr(measures, keyword, None) if measures is not None else None
        if value not in (None, ""):
            return value
    value = getattr(ds, keyword, None)
    return None if value in (None, "") else value


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """``count`` positive finite floats from a DICOM value (single or multi-valued), or None."""
    if value is None:
        return None
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) \
        else [value]
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(out) != count or not all(np.isfinite(out)) or any(v <= 0 for v in out):
        return None
    return out


def _check_frames(ds: Any, path: Path) -> int:
    """The frame count, after checking the header against the pixel data and per-frame groups."""
    if "PixelData" not in ds:
        raise DataError("the DICOM has no pixel data (PixelData, 7FE0,0010, is missing)", path=path)
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise DataError("Rows/Columns missing or zero: the image size is unknown", path=path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames <= 0:
        raise DataError(f"NumberOfFrames is {frames}", path=path)
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame is not None and len(per_frame) != frames:
        raise DataError(f"the header says {frames} frames (NumberOfFrames) but the per-frame "
                        f"functional groups describe {len(per_frame)} B-scans", path=path)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        bits = int(getattr(ds, "BitsAllocated", 8) or 8)
        spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        frame_bytes = rows * cols * spp * bits // 8
        actual = len(ds.PixelData)
        expected = frames * frame_bytes
        if actual not in (expected, expected + 1):     # one pad byte makes an odd length even
            raise DataError(f"the header says {frames} frames of {rows}x{cols} ({expected} bytes) "
                            f"but the pixel data holds {actual} bytes "
                            f"(~{actual / max(1, frame_bytes):.1f} frames)", path=path)
    return frames


def _pixels(ds: Any, path: Path) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for codecs/handlers
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DataError(f"cannot decode the pixel data (transfer syntax {syntax}: "
                        f"{type(exc).__name__})", path=path) from None
    return np.asarray(arr)


def _laterality(ds: Any) -> str:
    for kw in ("ImageLaterality", "Laterality"):
        code = laterality_code(getattr(ds, kw, ""))
        if code:
            return code
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    anatomy = _first(shared, "FrameAnatomySequence") if shared is not None else None
    return laterality_code(getattr(anatomy, "FrameLaterality", "")) if anatomy is not None else ""


def _date(ds: Any) -> str:
    for kw in ("AcquisitionDateTime", "ContentDate", "SeriesDate", "StudyDate"):
        value = iso_date(getattr(ds, kw, None))
        if value:
            return value
    return ""


def _key(ds: Any) -> str:
    return patient_key(getattr(ds, "PatientID", None), getattr(ds, "PatientName", None),
                       getattr(ds, "PatientBirthDate", None))


def _frame_locations(ds: Any, frames: int, path: Path) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                 str | None]:
    """Start/end ``(x, y)`` pixel-centre positions per frame and the referenced image UID."""
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame is None:
        return None, None, None
    start = np.full((frames, 2), np.nan)
    end = np.full((frames, 2), np.nan)
    uid = None
    for i, item in enumerate(per_frame):
        loc = _first(item, "OphthalmicFrameLocationSequence")
        if loc is None:
            continue
        coords = getattr(loc, "ReferenceCoordinates", None)
        if coords is None or len(coords) < 4:
            continue
        c = [float(v) for v in coords]
        start[i] = (c[1] - 0.5, c[0] - 0.5)
        end[i] = (c[-1] - 0.5, c[-2] - 0.5)
        uid = uid or str(getattr(loc, "ReferencedSOPInstanceUID", "") or "") or None
    if not np.isfinite(start).all():
        if np.isfinite(start).any():
            raise DataError("some B-scans have a position on the infrared image "
                            "(OphthalmicFrameLocationSequence) and others do not", path=path)
        return None, None, uid
    return start, end, uid


def _referenced_uid(ds: Any) -> str | None:
    ref = _first(ds, "ReferencedImageSequence")
    uid = getattr(ref, "ReferencedSOPInstanceUID", None) if ref is not None else None
    return str(uid) if uid else None


def is_photograph(ds: Any) -> bool:
    """True for an Ophthalmic Photography (or secondary capture) image rather than an OCT."""
    return str(getattr(ds, "SOPClassUID", "")) in OP_SOP_CLASSES or \
        str(getattr(ds, "Modality", "")).upper() in ("OP", "SC")


def find_infrared(oct_path: Path, ds: Any, uid: str | None) -> Path | None:
    """The infrared image among the DICOM files beside ``oct_path`` (see the module docstring)."""
    study = str(getattr(ds, "StudyInstanceUID", "") or "")
    candidates: list[Path] = []
    for other in sorted(oct_path.parent.iterdir()):
        if other == oct_path or not other.is_file() or not is_dicom(other):
            continue
        try:
            head = read_dataset(other, header_only=True)
        except DataError:
            continue
        if uid and str(getattr(head, "SOPInstanceUID", "")) == uid:
            return other
        if not uid and is_photograph(head) and (not study or str(getattr(head, "StudyInstanceUID", "")) == study):
            candidates.append(other)
    return candidates[0] if len(candidates) == 1 else None


def read_infrared(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """An infrared/SLO DICOM: ``(H, W)`` (or ``(H, W, 3)``) image and ``(row, col)`` mm/pixel."""
    ds = read_dataset(path)
    frames = _check_frames(ds, path)
    image = _pixels(ds, path)
    if frames > 1:
        image = image[0]
    if image.dtype != np.uint8:
        top = float(np.percentile(image, 99.9)) or 1.0
        image = np.clip(image.astype(np.float32) / top * 255 + 0.5, 0, 255).astype(np.uint8)
    spacing = _floats(_measure(ds, "PixelSpacing"), 2)
    return image, spacing  # type: ignore[return-value]


def read_dicom_volume(path: str | Path, infrared: str | Path | None = None) -> OCTVolume:
    """Read a Spectralis OCT DICOM export (see the module docstring for every attribute read).

    Args:
        path: the Ophthalmic Tomography DICOM file.
        infrared: the infrared image DICOM (default: found beside ``path``).

    Returns:
        A validated :class:`OCTVolume` (``format="dicom"``).

    Raises:
        DataError: naming the file, for input that cannot give a volume with its spacing.
    """
    path = Path(path)
    ds = read_dataset(path)
    if is_photograph(ds) and int(getattr(ds, "NumberOfFrames", 1) or 1) == 1:
        raise DataError("this DICOM holds a fundus photograph (Modality OP), not an OCT volume; "
                        "pass the Ophthalmic Tomography file", path=path)
    frames = _check_frames(ds, path)
    bscans = _pixels(ds, path)
    if bscans.ndim == 2:
        bscans = bscans[None]
    if bscans.ndim == 4:                     # colour-encoded B-scans: keep luminance
        bscans = bscans.mean(axis=-1).astype(np.uint8)
    if bscans.shape[0] != frames:
        raise DataError(f"the header says {frames} frames but {bscans.shape[0]} were decoded", path=path)
    warnings: list[str] = []
    pixel = _floats(_measure(ds, "PixelSpacing"), 2)
    if pixel is None:
        raise DataError("no pixel spacing: PixelSpacing (0028,0030) is missing or invalid in the "
                        "shared/per-frame pixel measures and at the top level; thickness in "
                        "micrometres cannot be computed", path=path)
    start, end, uid = _frame_locations(ds, frames, path)
    uid = uid or _referenced_uid(ds)
    ir_path = Path(infrared) if infrared is not None else find_infrared(path, ds, uid)
    localizer, loc_spacing = None, None
    if ir_path is not None:
        localizer, loc_spacing = read_infrared(ir_path)
        if loc_spacing is None:
            warnings.append("the infrared image has no PixelSpacing: its field in mm is unknown")
    else:
        warnings.append("no infrared image found: the thickness map is not registered to a "
                        "fundus image")
    between = _floats(_measure(ds, "SliceThickness"), 1) or _floats(
        getattr(ds, "SpacingBetweenSlices", None), 1)
    from_positions = None
    if frames > 1 and start is not None and loc_spacing is not None:
        steps = np.diff(start, axis=0) * np.asarray(loc_spacing)[::-1]
        distance = float(np.mean(np.hypot(steps[:, 0], steps[:, 1])))
        from_positions = distance if distance > 0 else None
    if between is None and from_positions is not None:
        between = (from_positions,)
    elif between is not None and from_positions is not None and \
            abs(between[0] - from_positions) > 0.1 * from_positions:
        warnings.append(f"the B-scan spacing in the header ({between[0]:.4g} mm) disagrees with the "
                        f"B-scan positions ({from_positions:.4g} mm); using the positions")
        between = (from_positions,)
    if between is None:
        if frames > 1:
            raise DataError("no B-scan spacing: SliceThickness (0018,0050) and SpacingBetweenSlices "
                            "(0018,0088) are missing and the frame positions cannot give it",
                            path=path)
        between = (pixel[1],)
    volume = OCTVolume(bscans=bscans, spacing_mm=(between[0], pixel[0], pixel[1]),
                       bscan_start=start, bscan_end=end, localizer=localizer,
                       localizer_spacing_mm=loc_spacing, laterality=_laterality(ds),
                       acquisition_date=_date(ds), patient_key=_key(ds), format="dicom",
                       warnings=warnings, source=str(path))
    return volume.validate()

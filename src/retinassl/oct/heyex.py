"""Heidelberg HEYEX exports (.vol files and XML + TIFF folders) read through eyepy into an
:class:`~retinassl.oct.volume.OCTVolume`.

eyepy (``eyepy.import_heyex_xml``; for ``.vol``, its ``HeVolReader``, which is what
``eyepy.import_heyex_vol`` wraps, so that the header's patient fields can be hashed) gives the
B-scans ``(n, height, width)``, ``scale_x`` (lateral mm/pixel), ``scale_y`` (axial), ``scale_z``
(B-scan distance), the localizer (SLO/infrared) image with its ``scale_x``/``scale_y``, every
B-scan's ``start_pos``/``end_pos`` in mm from the localizer's top-left corner, laterality (OD/OS),
the visit date, and layer annotations (boundary rows, NaN where missing; eyepy names them ``ILM``,
``BM``, ``RNFL``, ``GCL``, ... after the layer *above* the boundary, so ``RNFL`` is the RNFL/GCL
boundary). Positions in mm become localizer pixel centres: ``mm / scale - 0.5``.

Patient fields (the .vol header's ``patient_id``, ``pid``, ``dob``; the XML's ``PatientID``, first
and last names, date of birth) are read only to be hashed into the patient key. From the XML the
ETDRS grid centre the device placed (``ThicknessGrid/CenterPos``, localizer pixels) is kept as the
fovea.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np

from retinassl.errors import DataError
from retinassl.oct.identity import patient_key
from retinassl.oct.volume import OCTVolume, iso_date, laterality_code

log = logging.getLogger(__name__)


def _positions(ev: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    loc = ev.localizer
    sx, sy = float(loc.meta["scale_x"]), float(loc.meta["scale_y"])
    metas = ev.meta["bscan_meta"]
    try:
        start = np.array([[m["start_pos"][0] / sx, m["start_pos"][1] / sy] for m in metas]) - 0.5
        end = np.array([[m["end_pos"][0] / sx, m["end_pos"][1] / sy] for m in metas]) - 0.5
    except (KeyError, TypeError):
        return None, None
    if not (np.isfinite(start).all() and np.isfinite(end).all()):
        return None, None
    return start, end


def _volume(ev: Any, path: Path, fmt: str, key: str, fovea: tuple[float, float] | None) -> OCTVolume:
    data = np.asarray(ev.data)
    if data.ndim != 3:
        raise DataError(f"expected B-scans (n, height, width), got shape {data.shape}", path=path)
    meta = ev.meta
    between = meta.get("scale_z")
    n = data.shape[0]
    if between is None or not np.isfinite(float(between)) or float(between) <= 0:
        if n > 1:
            raise DataError("no B-scan distance in the export", path=path)
        between = float(meta["scale_x"])
    loc = ev.localizer
    localizer = np.asarray(loc.data)
    start, end = _positions(ev)
    layers = {}
    for name, layer in ev.layers.items():
        rows = np.asarray(layer.data, dtype=np.float32)
        if np.isfinite(rows).any():
            layers[str(name)] = rows
    volume = OCTVolume(
        bscans=data, spacing_mm=(float(between), float(meta["scale_y"]), float(meta["scale_x"])),
        bscan_start=start, bscan_end=end, localizer=localizer,
        localizer_spacing_mm=(float(loc.meta["scale_y"]), float(loc.meta["scale_x"])),
        laterality=laterality_code(meta.get("laterality")), acquisition_date=iso_date(
            meta.get("visit_date") or meta.get("exam_time")), patient_key=key, layers=layers,
        fovea=fovea, format=fmt, source=str(path))
    return volume.validate()


def read_heyex_vol(path: str | Path) -> OCTVolume:
    """A HEYEX ``.vol`` file (see the module docstring)."""
    from eyepy.io.he.vol_reader import HeVolReader

    path = Path(path)
    if not path.is_file():
        raise DataError("file does not exist", path=path)
    try:
        reader = HeVolReader(path)
        ev = reader.volume
    except Exception as exc:  # eyepy/construct raise many types on corrupt files
        raise DataError(f"not a readable HEYEX .vol file ({type(exc).__name__})", path=path) from None
    head = reader.parsed_file
    pid = getattr(head, "patient_id", None) or (getattr(head, "pid", None) or None)
    key = patient_key(pid, None, getattr(head, "dob", None))
    return _volume(ev, path, "heyex-vol", key, None)


def _xml_fovea(path: Path) -> tuple[float, float] | None:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    coord = root.find(".//ThicknessGrid/CenterPos/Coord")
    if coord is None:
        return None
    try:
        return float(coord.findtext("X", "")), float(coord.findtext("Y", ""))
    except ValueError:
        return None


def read_heyex_xml(path: str | Path) -> OCTVolume:
    """A HEYEX XML export (the ``.xml`` file; its TIFFs beside it)."""
    import eyepy

    path = Path(path)
    if not path.is_file():
        raise DataError("file does not exist", path=path)
    try:
        ev = eyepy.import_heyex_xml(path)
    except Exception as exc:  # eyepy raises many types on broken exports
        raise DataError(f"not a readable HEYEX XML export ({type(exc).__name__})", path=path) from None
    patient = ev.meta.get("patient") or {}
    name = " ".join(str(patient.get(k) or "") for k in ("lastname", "firstname")).strip()
    key = patient_key(patient.get("patient_id"), name, patient.get("dob"))
    return _volume(ev, path, "heyex-xml", key, _xml_fovea(path))

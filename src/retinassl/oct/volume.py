"""The one in-memory form of an OCT volume that every reader returns and every stage reads.

Conventions (the same as :mod:`retinassl.data.synthetic_oct`)
--------------------------------------------------------------
- ``bscans[i, r, c]``: B-scan ``i``, row ``r`` (0 = top, vitreous side), A-scan ``c``.
- ``spacing_mm = (between B-scans, axial, lateral)`` in millimetres.
- ``bscan_start[i]`` / ``bscan_end[i]``: position ``(x, y)`` of A-scan 0 / A-scan ``width - 1`` of
  B-scan ``i`` on the localizer (the infrared/SLO fundus image), in localizer pixels, pixel centres
  at integer coordinates (x = column, y = row). A-scans are equally spaced between them.
- ``localizer_spacing_mm = (row, column)`` millimetres per localizer pixel.
- ``layers[name]``: ``(n_bscans, width)`` float rows of a layer boundary (continuous coordinate:
  pixel row ``r`` spans ``[r - 0.5, r + 0.5)``), NaN where the boundary is not annotated.
- ``fovea``: ``(x, y)`` localizer pixels when the export records it (e.g. the HEYEX ETDRS grid
  centre), else None (then :func:`retinassl.oct.thickness.find_fovea` estimates it).

No patient identifier is ever stored here: ``patient_key`` is the salted hash of
:mod:`retinassl.oct.identity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retinassl.errors import DataError


@dataclass
class OCTVolume:
    """An OCT volume with its geometry on the fundus image (see the module conventions).

    Attributes:
        bscans: ``(n_bscans, depth, width)`` uint8 or float32.
        spacing_mm: ``(between B-scans, axial, lateral)`` mm.
        bscan_start, bscan_end: ``(n_bscans, 2)`` float64 localizer ``(x, y)``, or None when the
            export does not say where the B-scans are.
        localizer: ``(H, W)`` uint8 infrared/SLO image (or ``(H, W, 3)``), or None.
        localizer_spacing_mm: ``(row, column)`` mm per localizer pixel, or None.
        laterality: ``"R"``, ``"L"`` or ``""`` (unknown).
        acquisition_date: ISO date ``YYYY-MM-DD`` or ``""``.
        patient_key: salted hash of the patient identifiers (``""`` when the file has none).
        layers: boundary name -> ``(n_bscans, width)`` rows (NaN = missing).
        fovea: localizer ``(x, y)`` of the fovea from the export's metadata, or None.
        format: the reader that produced it (``dicom``, ``heyex-vol``, ``heyex-xml``, ``stack``).
        warnings: problems found while reading that do not stop processing (shown in outputs).
        source: the file read (used in error messages only; never written to outputs).
        spacing_stated: False when nobody stated the pixel spacing (single B-scan images without
            metadata): ``spacing_mm`` is then ``(nan, nan, nan)`` and thickness is in pixels.
    """

    bscans: np.ndarray
    spacing_mm: tuple[float, float, float]
    bscan_start: np.ndarray | None = None
    bscan_end: np.ndarray | None = None
    localizer: np.ndarray | None = None
    localizer_spacing_mm: tuple[float, float] | None = None
    laterality: str = ""
    acquisition_date: str = ""
    patient_key: str = ""
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    fovea: tuple[float, float] | None = None
    format: str = ""
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    spacing_stated: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_bscans, depth, width)``."""
        n, d, w = self.bscans.shape
        return int(n), int(d), int(w)

    @property
    def has_positions(self) -> bool:
        return self.bscan_start is not None and self.bscan_end is not None

    def validate(self) -> OCTVolume:
        """Check shapes and values; raise :class:`DataError` naming the source file."""
        path = self.source or None
        if self.bscans.ndim != 3 or min(self.bscans.shape) < 1:
            raise DataError(f"B-scans must be a 3-D array (n_bscans, depth, width), got shape "
                            f"{tuple(self.bscans.shape)}", path=path)
        n, _, w = self.shape
        spacing = np.asarray(self.spacing_mm, dtype=float)
        if not self.spacing_stated and spacing.shape == (3,) and np.isnan(spacing).all():
            pass                                    # unknown spacing: thickness in pixels
        elif spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise DataError(f"voxel spacing must be three positive millimetre values, got "
                            f"{self.spacing_mm}", path=path)
        self.spacing_mm = tuple(float(s) for s in spacing)  # type: ignore[assignment]
        if (self.bscan_start is None) != (self.bscan_end is None):
            raise DataError("B-scan start positions without end positions (or the reverse)", path=path)
        if self.bscan_start is not None:
            for name in ("bscan_start", "bscan_end"):
                arr = np.asarray(getattr(self, name), dtype=np.float64)
                if arr.shape != (n, 2) or not np.all(np.isfinite(arr)):
                    raise DataError(f"{name} must be ({n}, 2) finite (x, y) positions (one per "
                                    f"B-scan), got shape {arr.shape}", path=path)
                setattr(self, name, arr)
        for name, rows in self.layers.items():
            rows = np.asarray(rows, dtype=np.float32)
            if rows.shape != (n, w):
                raise DataError(f"layer {name!r} has shape {rows.shape}, expected ({n}, {w}) "
                                f"(one row per B-scan and A-scan)", path=path)
            self.layers[name] = rows
        if self.laterality not in ("L", "R", ""):
            raise DataError(f"laterality must be 'L', 'R' or '', got {self.laterality!r}", path=path)
        return self

    def describe(self) -> dict:
        """Metadata safe to write to outputs (no identifiers, no file names)."""
        n, d, w = self.shape
        return {"format": self.format, "shape": [n, d, w],
                "spacing_mm": list(self.spacing_mm) if self.spacing_stated else None,
                "spacing_stated": self.spacing_stated,
                "laterality": self.laterality, "acquisition_date": self.acquisition_date,
                "patient_key": self.patient_key, "has_positions": self.has_positions,
                "localizer_shape": None if self.localizer is None else list(self.localizer.shape),
                "localizer_spacing_mm": None if self.localizer_spacing_mm is None
                else list(self.localizer_spacing_mm),
                "layers": sorted(self.layers), "fovea_from_metadata": self.fovea is not None,
                "warnings": list(self.warnings)}


def laterality_code(value: object) -> str:
    """``"R"``/``"L"``/``""`` from the many ways exports write it (R, OD, right, L, OS, left)."""
    text = str(value or "").strip().upper()
    if text in ("R", "OD", "RIGHT", "RE"):
        return "R"
    if text in ("L", "OS", "LEFT", "LE"):
        return "L"
    return ""


def iso_date(value: object) -> str:
    """``YYYY-MM-DD`` from a DICOM ``YYYYMMDD`` string, a datetime/date, or an ISO string; ``""``
    when it cannot be read."""
    if value is None:
        return ""
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d")
    text = str(value).strip()
    if len(text) >= 8 and text[:8].isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}"
    if len(text) >= 10 and text[4] == "-" and text[7] == "-":
        return text[:10]
    return ""

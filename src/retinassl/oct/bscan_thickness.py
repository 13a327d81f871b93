"""Retinal thickness along single B-scans: the profile, the central (foveal) and the maximum
thickness, per B-scan and per eye.

For B-scans without positions on a fundus image (single exported images, :mod:`.bscan_images`)
there is no thickness map; what can be measured is the ILM-BM distance along each B-scan
(:func:`retinassl.oct.thickness.ascan_thickness`), in micrometres when the axial spacing is stated,
else in pixels.

- **Fovea**: the column given by the caller, else the thinnest point of the profile (smoothed with a
  NaN-aware Gaussian, :func:`retinassl.oct.thickness.smooth_nan`, sigma ``smooth_columns``) within
  the central third of the B-scan, where a B-scan centred on the macula has its foveal pit.
- **Central thickness**: the (unsmoothed) profile at the fovea column; NaN when undefined there.
- **Maximum thickness**: the largest value of the profile after a 5-column running median (one
  column's spike does not count), within ``max_fraction`` of the B-scan width centred on the
  fovea (by default half the width: the macula, not the optic disc at the side of a wide scan).
- **Per eye** (several B-scans): central thickness = the median over the B-scans flagged clean
  (over all B-scans, marked ``from_clean: false``, when none is clean), maximum = the largest over
  the same B-scans; the count of B-scans and of clean ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from retinassl.oct.boundary_quality import BScanQuality
from retinassl.oct.graph_search import VolumeBoundaries
from retinassl.oct.thickness import ascan_thickness, smooth_nan
from retinassl.oct.volume import OCTVolume


@dataclass
class BScanThickness:
    """Thickness of one B-scan.

    Attributes:
        profile: ``(W,)`` float32 thickness per A-scan in ``unit`` (NaN = undefined).
        unit: ``"um"`` or ``"px"``.
        fovea_column: the fovea's A-scan (None when the profile is undefined in the central third).
        fovea_given: True when the caller gave the fovea.
        central: thickness at the fovea (NaN when unknown).
        maximum: maximum thickness near the fovea (see the module docstring; NaN when undefined).
        maximum_column: its A-scan, or None.
        quality: the B-scan's boundary quality, when known.
    """

    profile: np.ndarray
    unit: str
    fovea_column: int | None
    fovea_given: bool
    central: float
    maximum: float
    maximum_column: int | None
    quality: BScanQuality | None = None

    @property
    def clean(self) -> bool:
        return self.quality is None or self.quality.clean

    def summary(self) -> dict:
        """The numbers without the profile (JSON-safe)."""
        return {"unit": self.unit, "fovea_column": self.fovea_column, "fovea_given": self.fovea_given,
                "central": _num(self.central), "maximum": _num(self.maximum),
                "maximum_column": self.maximum_column,
                "defined_fraction": float(np.isfinite(self.profile).mean()),
                "clean": self.clean, "flags": [] if self.quality is None else self.quality.reasons}


@dataclass
class EyeThickness:
    """Thickness of all B-scans of one eye, with the spacing it was measured with.

    Attributes:
        bscans: one :class:`BScanThickness` per B-scan.
        unit: ``"um"`` or ``"px"``.
        axial_um, lateral_um: the stated spacing (None when unknown).
        warnings: e.g. that the thickness is in pixels because the spacing is unknown.
    """

    bscans: list[BScanThickness]
    unit: str
    axial_um: float | None
    lateral_um: float | None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Eye-level central and maximum thickness (see the module docstring) and the spacing."""
        clean = [b for b in self.bscans if b.clean]
        use = clean or self.bscans
        centrals = np.array([b.central for b in use], dtype=np.float64)
        maxima = np.array([b.maximum for b in use], dtype=np.float64)
        return {"unit": self.unit, "axial_um": self.axial_um, "lateral_um": self.lateral_um,
                "spacing_stated": self.axial_um is not None,
                "n_bscans": len(self.bscans), "n_clean": len(clean), "from_clean": bool(clean),
                "central": _num(np.nanmedian(centrals)) if np.isfinite(centrals).any() else None,
                "maximum": _num(np.nanmax(maxima)) if np.isfinite(maxima).any() else None,
                "warnings": list(self.warnings)}


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def thickness_profile(ilm: np.ndarray, bm: np.ndarray, axial_um: float | None) -> np.ndarray:
    """ILM-BM thickness per A-scan: micrometres with ``axial_um``, else pixels.

    Args:
        ilm, bm: ``(..., W)`` boundary rows (NaN = undefined).

    Returns:
        ``(..., W)`` float32, NaN where a boundary is undefined or BM lies above the ILM.
    """
    # ascan_thickness works in millimetres per pixel -> micrometres; 1e-3 mm gives pixels
    return ascan_thickness(ilm, bm, (axial_um if axial_um is not None else 1.0) / 1000.0)


def find_fovea_column(profile: np.ndarray, smooth_columns: float = 3.0) -> int | None:
    """The thinnest point of the smoothed profile ``(W,)`` within its central third (None when the
    profile is undefined there)."""
    w = len(profile)
    lo, hi = w // 3, w - w // 3
    smooth = smooth_nan(np.asarray(profile, dtype=np.float64), smooth_columns) if smooth_columns > 0 \
        else np.asarray(profile, dtype=np.float64)
    central = smooth[lo:hi]
    if not np.isfinite(central).any():
        return None
    return int(lo + np.nanargmin(central))


def bscan_thickness(ilm: np.ndarray, bm: np.ndarray, axial_um: float | None,
                    fovea_column: int | None = None, quality: BScanQuality | None = None,
                    max_fraction: float = 0.5, smooth_columns: float = 3.0) -> BScanThickness:
    """Profile, central and maximum thickness of one B-scan (see the module docstring).

    Args:
        ilm, bm: ``(W,)`` boundary rows.
        axial_um: micrometres per row, or None (thickness in pixels).
        fovea_column: the fovea's A-scan if known (else found).
        quality: the boundary quality to attach.
        max_fraction: width (fraction of the B-scan) centred on the fovea where the maximum is taken.
        smooth_columns: Gaussian sigma (A-scans) of the smoothing used to find the fovea.
    """
    profile = thickness_profile(ilm, bm, axial_um)
    w = len(profile)
    given = fovea_column is not None
    if given and not 0 <= int(fovea_column) < w:  # type: ignore[arg-type]
        raise ValueError(f"fovea_column {fovea_column} outside the B-scan's {w} A-scans")
    fovea = int(fovea_column) if given else find_fovea_column(profile, smooth_columns)  # type: ignore[arg-type]
    central = float(profile[fovea]) if fovea is not None else math.nan
    centre = fovea if fovea is not None else w // 2
    half = max(1, int(round(max_fraction * w / 2)))
    lo, hi = max(0, centre - half), min(w, centre + half + 1)
    filled = np.where(np.isfinite(profile), profile, -np.inf)
    robust = ndimage.median_filter(filled, size=5, mode="nearest")[lo:hi]
    robust = np.where(np.isfinite(robust) & np.isfinite(profile[lo:hi]), robust, np.nan)
    if np.isfinite(robust).any():
        k = int(np.nanargmax(robust))
        maximum, max_col = float(robust[k]), lo + k
    else:
        maximum, max_col = math.nan, None
    return BScanThickness(profile=profile, unit="um" if axial_um is not None else "px",
                          fovea_column=fovea, fovea_given=given, central=central, maximum=maximum,
                          maximum_column=max_col, quality=quality)


def eye_thickness(volume: OCTVolume, boundaries: VolumeBoundaries,
                  fovea_columns: list[int | None] | None = None,
                  max_fraction: float = 0.5) -> EyeThickness:
    """:func:`bscan_thickness` for every B-scan of one eye's volume (its stated spacing, or pixels).

    Args:
        volume: the B-scans (e.g. :func:`retinassl.oct.bscan_images.read_bscan_images`).
        boundaries: their ILM/BM (:func:`retinassl.oct.graph_search.detect_volume`).
        fovea_columns: per B-scan, the fovea's A-scan or None (found).
        max_fraction: see :func:`bscan_thickness`.
    """
    n = volume.shape[0]
    if boundaries.ilm.shape[0] != n:
        raise ValueError(f"boundaries for {boundaries.ilm.shape[0]} B-scans, volume has {n}")
    fovea_columns = fovea_columns or [None] * n
    axial = volume.spacing_mm[1] * 1000.0 if volume.spacing_stated else None
    lateral = volume.spacing_mm[2] * 1000.0 if volume.spacing_stated else None
    quality = boundaries.quality or [None] * n
    per = [bscan_thickness(boundaries.ilm[i], boundaries.bm[i], axial, fovea_columns[i], quality[i],
                           max_fraction) for i in range(n)]
    return EyeThickness(bscans=per, unit="um" if axial is not None else "px", axial_um=axial,
                        lateral_um=lateral, warnings=list(volume.warnings))

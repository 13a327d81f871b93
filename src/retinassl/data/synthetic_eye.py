"""What a synthetic fundus eye is made of (:mod:`retinassl.data.synthetic_fundus` renders it):
patient-level traits, the anatomy (field of view, optic disc and cup, fovea, pixel size), the
image-level labels, the macular oedema, and the rendered :class:`SyntheticEye` with its masks.

Coordinates: ``(x, y)`` = (column, row) in image pixels, pixel centres at integer coordinates.
A right eye ("R") has its disc on the image's right (nasal side), a left eye is mirrored. Every
draw takes a ``numpy.random.Generator`` (:func:`as_generator`), never the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


LESION_KEYS: tuple[str, ...] = ("MA", "HE", "EX", "SE")


MASK_KEYS: tuple[str, ...] = LESION_KEYS + ("OD", "vessels", "fov")


def as_generator(rng: int | np.random.Generator) -> np.random.Generator:
    """A numpy Generator from a seed or the Generator itself (never the global RNG)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be an int seed or a numpy.random.Generator, got {type(rng).__name__}")


@dataclass(frozen=True)
class PatientTraits:
    """What the two eyes of one patient share (so that patient-level splits matter).

    Attributes:
        pigment: ``(3,)`` RGB albedo of the retina background (linear, 0-1).
        brightness: overall camera gain.
        young: young eyes have a foveal reflex and retinal sheen more often.
        thickness_scale: scale of the inner retinal layers in OCT (1.0 = average).
        severity: 0-1 propensity for more lesions when diseased.
    """

    pigment: tuple[float, float, float]
    brightness: float
    young: bool
    thickness_scale: float
    severity: float


def sample_traits(rng: np.random.Generator) -> PatientTraits:
    """Draw :class:`PatientTraits` for one patient."""
    r = rng.uniform(0.66, 0.8)
    g = r * rng.uniform(0.36, 0.47)
    b = g * rng.uniform(0.15, 0.5)
    return PatientTraits((float(r), float(g), float(b)), float(rng.uniform(0.88, 1.08)),
                         bool(rng.random() < 0.45), float(rng.uniform(0.9, 1.2)),
                         float(rng.random()))


@dataclass(frozen=True)
class Anatomy:
    """Geometry of one synthetic eye, in image pixels unless stated.

    Attributes:
        eye: "R" or "L".
        size: image side in pixels (images are square).
        pixel_mm: size of one pixel on the retina, in millimetres.
        fov_centre, fov_radius: the circular field of view.
        od_centre: optic-disc centre ``(x, y)``; ``od_radii``: disc semi-axes ``(rx, ry)``.
        cup_centre, cup_radii: the optic cup.
        fovea: foveal centre ``(x, y)``.
        disc_diameter_mm: horizontal disc diameter (the "DD" of the DME rule), millimetres.
    """

    eye: str
    size: int
    pixel_mm: float
    fov_centre: tuple[float, float]
    fov_radius: float
    od_centre: tuple[float, float]
    od_radii: tuple[float, float]
    cup_centre: tuple[float, float]
    cup_radii: tuple[float, float]
    fovea: tuple[float, float]
    disc_diameter_mm: float


@dataclass(frozen=True)
class EyeLabels:
    """Image-level labels: ``abnormal`` {0,1}, ``dr_grade`` {0..4}, ``dme`` {0..2}."""

    abnormal: int
    dr_grade: int
    dme: int


@dataclass(frozen=True)
class Oedema:
    """Macular oedema (retinal thickening) that the OCT renderer applies.

    Attributes:
        centre: ``(x, y)`` fundus pixels of the leakage point (centre of the near-fovea exudates).
        sigma_mm: Gaussian radius of the thickening.
        amplitude_um: peak extra thickness in micrometres.
    """

    centre: tuple[float, float]
    sigma_mm: float
    amplitude_um: float


@dataclass
class SyntheticEye:
    """One rendered eye.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB fundus photograph.
        lesion_free: ``(H, W, 3)`` uint8, the same eye rendered without lesions (equal to ``image``
            outside the lesion masks).
        masks: ``(H, W)`` bool masks keyed by :data:`MASK_KEYS` (MA, HE, EX, SE, OD, vessels, fov).
        labels: image-level labels.
        anatomy: geometry (disc, fovea, FOV, pixel size).
        traits: the patient-level traits it was drawn with.
        oedema: the macular oedema (None when the eye has none).
        reflectance: ``(H, W, 3)`` float32 retina with lesions before illumination, noise and the FOV
            cut; the infrared image of :mod:`retinassl.data.synthetic_oct` is derived from it.
        lesion_counts: number of drawn lesions per type.
        vessel_coverage: ``(H, W)`` float32 sub-pixel vessel coverage in [0, 1].
    """

    image: np.ndarray
    lesion_free: np.ndarray
    masks: dict[str, np.ndarray]
    labels: EyeLabels
    anatomy: Anatomy
    traits: PatientTraits
    oedema: Oedema | None
    reflectance: np.ndarray
    lesion_counts: dict[str, int] = field(default_factory=dict)
    vessel_coverage: np.ndarray | None = None


# -- anatomy ------------------------------------------------------------------------------------
def sample_anatomy(rng: np.random.Generator, size: int, eye: str) -> Anatomy:
    """Place the FOV, disc, cup and fovea for an eye of ``size`` pixels."""
    if eye not in ("L", "R"):
        raise ValueError(f"eye must be 'L' or 'R', got {eye!r}")
    nasal = 1.0 if eye == "R" else -1.0
    c = (size - 1) / 2.0
    fov_r = size * rng.uniform(0.445, 0.478)
    fov_c = (c + rng.uniform(-0.01, 0.01) * size, c + rng.uniform(-0.01, 0.01) * size)
    px_mm = rng.uniform(12.0, 13.2) / (2 * fov_r)          # a 45-degree field is ~12.5 mm across
    fovea = (fov_c[0] - nasal * rng.uniform(0.3, 1.0) / px_mm,
             fov_c[1] + rng.uniform(-0.4, 0.4) / px_mm)
    dist = rng.uniform(4.2, 4.8) / px_mm
    od = (fovea[0] + nasal * dist, fovea[1] - rng.uniform(0.15, 0.6) / px_mm)
    rx = rng.uniform(0.8, 0.95) / px_mm
    od_radii = (rx, rx * rng.uniform(1.03, 1.14))
    cdr = rng.uniform(0.25, 0.55)
    cup_radii = (od_radii[0] * cdr, od_radii[1] * cdr * rng.uniform(1.0, 1.15))
    cup = (od[0] - nasal * od_radii[0] * rng.uniform(0.05, 0.2),
           od[1] + rng.uniform(-0.05, 0.05) * rx)
    return Anatomy(eye, size, float(px_mm), (float(fov_c[0]), float(fov_c[1])), float(fov_r),
                   (float(od[0]), float(od[1])), (float(od_radii[0]), float(od_radii[1])),
                   (float(cup[0]), float(cup[1])), (float(cup_radii[0]), float(cup_radii[1])),
                   (float(fovea[0]), float(fovea[1])), float(2 * od_radii[0] * px_mm))


def random_point(rng: np.random.Generator, a: Anatomy, sigma_mm: float,
                  centre: tuple[float, float] | None = None,
                  avoid: np.ndarray | None = None, tries: int = 30) -> tuple[float, float]:
    """A point ~ N(centre, sigma) inside 0.9 of the FOV, off the disc and off ``avoid`` pixels."""
    cx, cy = centre if centre is not None else a.fovea
    sig = sigma_mm / a.pixel_mm
    last = (a.fovea[0], a.fovea[1])
    for _ in range(tries):
        x, y = cx + rng.normal(0, sig), cy + rng.normal(0, sig)
        if math.hypot(x - a.fov_centre[0], y - a.fov_centre[1]) > 0.9 * a.fov_radius:
            continue
        if math.hypot((x - a.od_centre[0]) / a.od_radii[0],
                      (y - a.od_centre[1]) / a.od_radii[1]) < 1.35:
            continue
        last = (float(x), float(y))
        if avoid is not None:
            ix, iy = int(round(x)), int(round(y))
            if 0 <= ix < a.size and 0 <= iy < a.size and avoid[iy, ix]:
                continue
        return last
    return last

"""Procedural colour fundus photographs with exact anatomy, lesion masks and DR/DME labels.

One call, :func:`render_eye`, draws one eye: a circular field of view (FOV) on a black background,
an orange-red retina with smooth illumination fall-off and fine texture, a bright optic disc (OD) with
a paler cup, a darker macula with a foveal pit, a branching artery/vein tree from the disc (see
:mod:`retinassl.data.synthetic_vessels`), healthy look-alikes ("distractors": foveal and vessel-wall
light reflexes, retinal sheen, small drusen-like bright dots, small pigment spots, vessel crossings),
and, for a diseased eye, diabetic-retinopathy lesions:

=====  =======================  =============================================================
key    lesion                   drawn as
=====  =======================  =============================================================
MA     microaneurysm            tiny dark-red round dot, 70-120 um across
HE     haemorrhage              dark-red dot/blot (union of ellipses) or flame (elongated, radial
                                from the disc); grade 4 adds a large boat-shaped preretinal one
EX     hard exudate             sharp bright-yellow spots in clusters, often a partial ring
                                (circinate) around a leakage point near the macula
SE     soft exudate             pale fuzzy cotton-wool spot near the disc and arcades
=====  =======================  =============================================================

Exactness contract
------------------
Every lesion is an opacity map ``alpha`` (0 outside the lesion) blended into the lesion-free
rendering; a lesion type's mask is exactly the support of its opacity (``alpha > 0``) inside the
FOV. Everything drawn after the lesions (illumination, sensor noise, the FOV cut, rounding to uint8)
is pixel-wise and identical for the lesion-free rendering, so ``image != lesion_free`` only inside the
union of the lesion masks. :class:`SyntheticEye` carries both renderings so that tests can check it.
The OD mask is the disc ellipse; the vessel mask is ``coverage >= 0.5`` (see the vessels module); the
FOV mask is the disc ``(x - cx)^2 + (y - cy)^2 <= r^2``. Lesions have a physical size but never less
than about one pixel, so tiny test images (32-64 px) still show, and mask, every lesion.

Coordinates: ``(x, y)`` = (column, row) in image pixels, pixel centres at integer coordinates.
A right eye ("R") has its disc on the image's right (nasal side), a left eye is mirrored.

Labels (consistent with the drawn lesions by construction):
``dr_grade`` (ICDR) 0 none; 1 microaneurysms only; 2 moderate: microaneurysms plus a few haemorrhages
and/or exudates; 3 severe: many haemorrhages in several quadrants, cotton-wool spots; 4 proliferative,
represented only by what the four lesion types can show (a large preretinal boat haemorrhage on top of
severe NPDR; no neovascular fronds are drawn). ``dme`` (IDRiD convention) computed from the EX mask:
0 no hard exudate; 1 hard exudates, none within one disc diameter of the fovea; 2 some within it.
``abnormal`` = ``dr_grade > 0`` = some lesion mask is non-empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from retinassl.data.synthetic_vessels import TreeGeometry, VesselMaps, draw_tree, grow_tree

LESION_KEYS: tuple[str, ...] = ("MA", "HE", "EX", "SE")
MASK_KEYS: tuple[str, ...] = LESION_KEYS + ("OD", "vessels", "fov")
_RAMP = 0.1            # lesion opacity below this is cut; above it rescaled to start from 0


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


# -- small drawing helpers ----------------------------------------------------------------------
def _bbox(alpha: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of the non-zero pixels of a 2-D array (None when all zero)."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(alpha.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _noise_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean noise with about ``cells`` features across, std ~1, ``(size, size)``."""
    cells = max(2, cells)
    low = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    up = cv2.resize(low, (size + 3 * size // cells, size + 3 * size // cells),
                    interpolation=cv2.INTER_CUBIC)
    off = (up.shape[0] - size) // 2
    return np.ascontiguousarray(up[off:off + size, off:off + size])


class _Stamp:
    """Accumulates lesion opacities of one type (max over lesions) on a full-size canvas."""

    def __init__(self, size: int) -> None:
        self.alpha = np.zeros((size, size), np.float32)
        self.count = 0
        self.size = size

    def ellipses(self, parts: list[tuple[float, float, float, float, float]], peak: float,
                 fuzzy: bool, edge: float = 0.8, shade: float = 0.0) -> None:
        """Add one lesion made of ellipses ``(cx, cy, a, b, angle)``; union by max.

        Sharp lesions get a linear edge ramp ``edge`` pixels wide (anti-aliasing) and, with
        ``shade``, an opacity falling by that fraction from centre to rim; fuzzy ones a Gaussian
        fall-off. ``peak`` is the maximum opacity.
        """
        reach = max(max(p[2], p[3]) for p in parts) * (2.2 if fuzzy else 1.0) + 2
        xs = [p[0] for p in parts]
        ys = [p[1] for p in parts]
        x0 = max(0, int(math.floor(min(xs) - reach)))
        x1 = min(self.size, int(math.ceil(max(xs) + reach)) + 1)
        y0 = max(0, int(math.floor(min(ys) - reach)))
        y1 = min(self.size, int(math.ceil(max(ys) + reach)) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        local = np.zeros(xx.shape, np.float32)
        for cx, cy, a, b, ang in parts:
            ca, sa = math.cos(ang), math.sin(ang)
            u = ((xx - cx) * ca + (yy - cy) * sa) / a
            v = (-(xx - cx) * sa + (yy - cy) * ca) / b
            d = np.sqrt(u * u + v * v)
            if fuzzy:
                part = np.exp(-1.6 * d * d)
            else:
                part = np.clip(0.5 + (1.0 - d) * min(a, b) / edge, 0.0, 1.0)
                if shade:                                    # darker/denser centre
                    part *= 1.0 - shade * np.minimum(d, 1.0) ** 2
            np.maximum(local, part, out=local)
        view = self.alpha[y0:y1, x0:x1]
        np.maximum(view, local * peak, out=view)
        self.count += 1

    def opacity(self, fov: np.ndarray) -> np.ndarray:
        """Final opacity: cut below :data:`_RAMP`, rescaled to be continuous, zero outside FOV."""
        a = np.clip((self.alpha - _RAMP) / (1.0 - _RAMP), 0.0, 1.0)
        a[~fov] = 0.0
        return a


# -- the healthy eye ----------------------------------------------------------------------------
def _background(rng: np.random.Generator, a: Anatomy, t: PatientTraits, xx: np.ndarray,
                yy: np.ndarray) -> np.ndarray:
    """Retina albedo with texture, macula, disc and cup: ``(H, W, 3)`` float32."""
    s = a.size
    tex = (0.035 * _noise_field(rng, s, 10) + 0.02 * _noise_field(rng, s, max(4, s // 12)))
    grain = rng.standard_normal((s, s)).astype(np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), max(0.6, 0.02 / a.pixel_mm))
    tex += 0.018 * grain / max(1e-6, float(grain.std()))
    pig = np.asarray(t.pigment, np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    img = pig[None, None, :] * (1.0 + tex[..., None])
    # macula: broad darkening (macular pigment) with a darker foveal centre (separable Gaussians)
    dx = (np.arange(s, dtype=np.float32) - a.fovea[0]) * a.pixel_mm
    dy = (np.arange(s, dtype=np.float32) - a.fovea[1]) * a.pixel_mm

    def gauss(sigma: float) -> np.ndarray:
        return np.outer(np.exp(-dy ** 2 / (2 * sigma ** 2)), np.exp(-dx ** 2 / (2 * sigma ** 2)))

    mac = (rng.uniform(0.22, 0.34) * gauss(rng.uniform(0.8, 1.2))
           + rng.uniform(0.08, 0.16) * gauss(0.25)).astype(np.float32)
    img *= (1.0 - mac[..., None] * np.array([0.8, 1.15, 1.25], np.float32))
    # disc: bright yellow-orange with a soft edge, paler rim halo, whiter cup (within a box)
    (ox, oy), (rx, ry) = a.od_centre, a.od_radii
    y0, y1 = max(0, int(oy - 1.6 * ry)), min(s, int(oy + 1.6 * ry) + 2)
    x0, x1 = max(0, int(ox - 1.6 * rx)), min(s, int(ox + 1.6 * rx) + 2)
    whole, img = img, img[y0:y1, x0:x1]
    xx, yy = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]
    d = np.sqrt(((xx - ox) / rx) ** 2 + ((yy - oy) / ry) ** 2)
    disc = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / 0.035, -30, 30)))
    halo = 0.08 * np.exp(-((d - 1.05) / 0.12) ** 2)
    od_col = np.array([1.0, 0.7, 0.45], np.float32) * rng.uniform(0.9, 1.02)
    img = img * (1 - 0.85 * disc[..., None]) + od_col * (0.85 * disc[..., None])
    img *= 1.0 + halo[..., None]
    (cx, cy), (crx, cry) = a.cup_centre, a.cup_radii
    dc = np.sqrt(((xx - cx) / crx) ** 2 + ((yy - cy) / cry) ** 2)
    cup = 1.0 / (1.0 + np.exp(np.clip((dc - 1.0) / 0.15, -30, 30)))
    cup_col = np.array([1.0, 0.9, 0.76], np.float32)
    img = img * (1 - 0.8 * cup[..., None]) + cup_col * (0.8 * cup[..., None])
    whole[y0:y1, x0:x1] = img
    return whole.astype(np.float32)


def _apply_vessels(img: np.ndarray, v: VesselMaps) -> np.ndarray:
    """Darken ``img`` by the vessel coverage maps (veins darker and wider than arteries)."""
    dv = (0.45 * v.vein + 0.55 * v.vein_core)[..., None]
    da = np.clip(0.45 * v.artery + 0.55 * v.artery_core - 0.4 * v.reflex, 0, 1)[..., None]
    kv = 1.0 - np.array([0.66, 0.4, 0.48], np.float32)
    ka = 1.0 - np.array([0.84, 0.6, 0.66], np.float32)
    return img * (1.0 - dv * kv) * (1.0 - da * ka)


def _distractors(rng: np.random.Generator, img: np.ndarray, a: Anatomy, t: PatientTraits,
                 v: VesselMaps, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Healthy look-alikes of lesions, drawn in every eye (never in a lesion mask)."""
    s, mm = a.size, 1.0 / a.pixel_mm
    bright = _Stamp(s)
    dark = _Stamp(s)
    # foveal light reflex
    if rng.random() < (0.8 if t.young else 0.35):
        r = max(0.6, rng.uniform(0.03, 0.06) * mm)
        bright.ellipses([(a.fovea[0], a.fovea[1], r, r, 0.0)], rng.uniform(0.25, 0.5), fuzzy=True)
    # retinal sheen along the arcades (young eyes) and vessel-wall reflexes
    big = [vs for vs in v.vessels if len(vs.points) > 20]
    for _ in range(int(rng.poisson(6 if t.young else 1.5))):
        if not big:
            break
        vs = big[int(rng.integers(len(big)))]
        k = int(rng.integers(1, len(vs.points) - 1))
        p, q = vs.points[k], vs.points[k + 1] - vs.points[k - 1]
        off = rng.normal(0, 0.12 * mm, 2)
        ln = max(1.0, rng.uniform(0.2, 0.6) * mm)
        bright.ellipses([(p[0] + off[0], p[1] + off[1], ln, ln * rng.uniform(0.15, 0.35),
                          math.atan2(q[1], q[0]))], rng.uniform(0.08, 0.2), fuzzy=True)
    # small bright dots (drusen-like, reflexes): softer and paler than hard exudates
    for _ in range(int(rng.poisson(4))):
        p = _random_point(rng, a, sigma_mm=3.0)
        r = max(0.7, rng.uniform(0.025, 0.06) * mm)
        bright.ellipses([(p[0], p[1], r, r * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi))],
                        rng.uniform(0.25, 0.5), fuzzy=True)
    # small dark spots: pigment clumps, greyer and fainter than microaneurysms
    for _ in range(int(rng.poisson(3))):
        p = _random_point(rng, a, sigma_mm=3.5)
        r = max(0.8, rng.uniform(0.04, 0.08) * mm)
        dark.ellipses([(p[0], p[1], r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi))],
                      rng.uniform(0.3, 0.6), fuzzy=True)
    box = _bbox(bright.alpha)
    if box is not None:
        ab = bright.alpha[box][..., None]
        img[box] = img[box] * (1 - ab) + np.array([1.0, 0.88, 0.7], np.float32) * ab
    box = _bbox(dark.alpha)
    if box is not None:
        img[box] = img[box] * (1 - dark.alpha[box][..., None]
                               * np.array([0.35, 0.38, 0.3], np.float32))
    return img


def _random_point(rng: np.random.Generator, a: Anatomy, sigma_mm: float,
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


# -- lesions ------------------------------------------------------------------------------------
GRADE_PROBS = (0.25, 0.35, 0.25, 0.15)           # grades 1-4 among diseased eyes
_DME_PROBS = {1: (1.0, 0.0, 0.0), 2: (0.5, 0.25, 0.25), 3: (0.25, 0.3, 0.45), 4: (0.25, 0.3, 0.45)}


def _draw_lesions(rng: np.random.Generator, a: Anatomy, t: PatientTraits, grade: int,
                  v: VesselMaps) -> tuple[dict[str, _Stamp], _Stamp | None, Oedema | None]:
    """Lesion opacities per type for a given DR grade; also the oedema they imply."""
    s, mm = a.size, 1.0 / a.pixel_mm
    st = {k: _Stamp(s) for k in LESION_KEYS}
    boat = None
    sev = 0.6 + 0.8 * t.severity
    on_vessel = v.mask
    dd_px = a.disc_diameter_mm * mm
    if grade == 0:
        return st, boat, None
    n_ma = {1: 1 + rng.poisson(2.0), 2: 2 + rng.poisson(5 * sev), 3: 5 + rng.poisson(9 * sev),
            4: 5 + rng.poisson(9 * sev)}[grade]
    n_ma = min(int(n_ma), 6) if grade == 1 else int(n_ma)
    n_he = {1: 0, 2: 1 + rng.poisson(2 * sev), 3: 8 + rng.poisson(7 * sev),
            4: 8 + rng.poisson(7 * sev)}[grade]
    n_se = {1: 0, 2: int(rng.random() < 0.3) * (1 + rng.poisson(0.5)), 3: 1 + rng.poisson(1.5),
            4: 1 + rng.poisson(1.5)}[grade]
    dme_target = int(rng.choice(3, p=_DME_PROBS[grade]))
    if grade == 2 and n_he == 0 and n_se == 0 and dme_target == 0:
        n_he = 1
    # microaneurysms: posterior pole, temporal to the disc
    for _ in range(n_ma):
        x, y = _random_point(rng, a, 2.2, avoid=on_vessel)
        r = max(0.9, rng.uniform(0.035, 0.06) * mm)
        st["MA"].ellipses([(x, y, r, r * rng.uniform(0.85, 1.0), 0.0)], rng.uniform(0.75, 1.0),
                          fuzzy=False, edge=max(0.8, 0.4 * r), shade=0.25)
    # haemorrhages: dot/blot (union of ellipses) or flame (radial from the disc, near vessels)
    quadrant = 0
    for i in range(n_he):
        if rng.random() < 0.25 and v.vessels:
            vs = v.vessels[int(rng.integers(min(len(v.vessels), 12)))]
            p = vs.points[int(rng.integers(len(vs.points)))]
            x, y = float(p[0] + rng.normal(0, 0.15 * mm)), float(p[1] + rng.normal(0, 0.15 * mm))
            ang = math.atan2(y - a.od_centre[1], x - a.od_centre[0])
            ln = max(1.6, rng.uniform(0.15, 0.3) * mm)
            st["HE"].ellipses([(x, y, ln, max(0.9, ln * rng.uniform(0.25, 0.4)), ang)],
                              rng.uniform(0.6, 0.9), fuzzy=False, edge=max(0.8, 0.15 * ln),
                              shade=0.3)
            continue
        if grade >= 3:              # spread across the four quadrants around the fovea
            quadrant = (quadrant + 1) % 4
            qa = (quadrant + rng.uniform(0.1, 0.9)) * math.pi / 2
            dist = rng.uniform(1.0, 4.5) * mm
            x, y = a.fovea[0] + dist * math.cos(qa), a.fovea[1] + dist * math.sin(qa)
            x, y = _random_point(rng, a, 0.3, centre=(x, y))
        else:
            x, y = _random_point(rng, a, 2.8)
        r = max(1.1, rng.uniform(0.07, 0.2) * mm)
        parts = [(x, y, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi))]
        for _ in range(int(rng.integers(0, 4))):
            parts.append((x + rng.normal(0, 0.5 * r), y + rng.normal(0, 0.5 * r),
                          r * rng.uniform(0.4, 0.8), r * rng.uniform(0.3, 0.7),
                          rng.uniform(0, math.pi)))
        st["HE"].ellipses(parts, rng.uniform(0.65, 0.95), fuzzy=False,
                          edge=max(0.8, 0.3 * r), shade=rng.uniform(0.2, 0.5))
    if grade == 4:
        boat = _Stamp(s)
        x, y = _random_point(rng, a, 3.0)
        r = max(2.0, rng.uniform(0.5, 0.9) * mm)
        parts = [(x, y, r, r * rng.uniform(0.8, 1.0), 0.0)]
        parts += [(x + rng.normal(0, 0.4 * r), y + rng.uniform(0, 0.4) * r,
                   r * rng.uniform(0.4, 0.7),
                   r * rng.uniform(0.3, 0.6), rng.uniform(0, math.pi)) for _ in range(3)]
        boat.ellipses(parts, 0.95, fuzzy=False)
        cut = int(math.floor(y - r * rng.uniform(0.1, 0.5)))      # flat fluid level on top
        boat.alpha[:max(0, cut), :] = 0.0
        np.maximum(st["HE"].alpha, boat.alpha, out=st["HE"].alpha)
        st["HE"].count += 1
    # cotton-wool spots near the disc, along the big vessels
    big = [vs for vs in v.vessels[:8] if len(vs.points) > 10]
    for _ in range(n_se):
        if big:
            vs = big[int(rng.integers(len(big)))]
            k = int(rng.integers(min(len(vs.points), max(3, int(4.0 * mm / 1.5)))))
            p = vs.points[k]
            x, y = _random_point(rng, a, 0.3, centre=(float(p[0]), float(p[1])))
        else:
            x, y = _random_point(rng, a, 2.5)
        r = max(1.4, rng.uniform(0.15, 0.32) * mm)
        parts = [(x, y, r, r * rng.uniform(0.6, 0.9), rng.uniform(0, math.pi))]
        if rng.random() < 0.5:
            parts.append((x + rng.normal(0, 0.4 * r), y + rng.normal(0, 0.4 * r), r * 0.6, r * 0.5,
                          rng.uniform(0, math.pi)))
        st["SE"].ellipses(parts, rng.uniform(0.55, 0.8), fuzzy=True)
    # hard exudates: clusters; a circinate ring around a leakage point near the fovea for DME 2
    oedema = None
    centres: list[tuple[float, float, float]] = []          # (x, y, ring radius px)
    if dme_target == 2:
        ang = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(0.15, 0.8) * dd_px
        c = (a.fovea[0] + dist * math.cos(ang), a.fovea[1] + dist * math.sin(ang))
        ring = max(1.5, rng.uniform(0.25, 0.6) * mm)
        centres.append((c[0], c[1], ring))
        amp = rng.uniform(50, 110) + 60 * t.severity + 20 * (grade - 2)
        oedema = Oedema((float(c[0]), float(c[1])), float(rng.uniform(0.5, 1.0)), float(amp))
    if dme_target >= 1:
        for _ in range(int(rng.integers(1, 3)) if dme_target == 1 else int(rng.integers(0, 2))):
            for _try in range(20):
                ang = rng.uniform(0, 2 * math.pi)
                dist = rng.uniform(1.0, 2.2) * dd_px + 1.0 * mm
                c = (a.fovea[0] + dist * math.cos(ang), a.fovea[1] + dist * math.sin(ang))
                ok = math.hypot(c[0] - a.fov_centre[0], c[1] - a.fov_centre[1]) < 0.8 * a.fov_radius
                ok &= math.hypot(c[0] - a.od_centre[0], c[1] - a.od_centre[1]) > 2.5 * a.od_radii[0]
                if ok:
                    centres.append((c[0], c[1], max(1.5, rng.uniform(0.2, 0.5) * mm)))
                    break
    for cx, cy, ring in centres:
        n = int(rng.integers(6, 18 + int(14 * sev)))
        arc0, span = rng.uniform(0, 2 * math.pi), rng.uniform(1.2, 2 * math.pi)
        for _ in range(n):
            ang = arc0 + rng.uniform(0, span)
            rho = ring * rng.normal(1.0, 0.25) if rng.random() < 0.75 else ring * rng.uniform(0, 0.8)
            x, y = cx + rho * math.cos(ang), cy + rho * math.sin(ang)
            r = max(0.7, rng.uniform(0.02, 0.07) * mm) * (2.0 if rng.random() < 0.1 else 1.0)
            parts = [(x, y, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi))]
            if r > 0.05 * mm:
                parts.append((x + rng.normal(0, 0.6 * r), y + rng.normal(0, 0.6 * r), r * 0.7,
                              r * 0.5, rng.uniform(0, math.pi)))
            st["EX"].ellipses(parts, rng.uniform(0.6, 0.95), fuzzy=False, edge=0.6)
    return st, boat, oedema


def _apply_lesions(img: np.ndarray, op: dict[str, np.ndarray], boat: np.ndarray | None,
                   rng: np.random.Generator) -> np.ndarray:
    """Blend lesion opacities into ``img``: red lesions darken, exudates brighten."""
    def darken(im: np.ndarray, alpha: np.ndarray, factor: np.ndarray) -> np.ndarray:
        box = _bbox(alpha)
        if box is not None:
            im[box] = im[box] * (1.0 - alpha[box][..., None] * (1.0 - factor))
        return im

    def blend(im: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
        box = _bbox(alpha)
        if box is not None:
            a3 = alpha[box][..., None]
            im[box] = im[box] * (1.0 - a3) + colour * a3
        return im

    img = img.copy()

    jitter = rng.uniform(0.93, 1.07, 4).astype(np.float32)
    img = darken(img, op["MA"], np.array([0.6, 0.36, 0.45], np.float32) * jitter[0])
    img = darken(img, op["HE"], np.array([0.56, 0.32, 0.4], np.float32) * jitter[1])
    if boat is not None:
        img = darken(img, boat, np.array([0.85, 0.8, 0.85], np.float32))
    img = blend(img, op["SE"], np.array([0.95, 0.84, 0.72], np.float32) * jitter[2])
    img = blend(img, op["EX"], np.array([0.98, 0.86, 0.42], np.float32) * jitter[3])
    return img


def _dme_from_mask(ex: np.ndarray, a: Anatomy) -> int:
    """IDRiD DME risk from the hard-exudate mask: 0 none, 1 all > 1 DD from fovea, 2 within."""
    ys, xs = np.nonzero(ex)
    if len(xs) == 0:
        return 0
    dist_mm = np.hypot(xs - a.fovea[0], ys - a.fovea[1]) * a.pixel_mm
    return 2 if float(dist_mm.min()) <= a.disc_diameter_mm else 1


# -- public entry -------------------------------------------------------------------------------
def render_eye(rng: int | np.random.Generator, size: int = 512, *, eye: str = "R",
               diseased: bool | None = None, prevalence: float = 0.5, grade: int | None = None,
               traits: PatientTraits | None = None) -> SyntheticEye:
    """Render one synthetic fundus photograph with exact masks and labels.

    Args:
        rng: seed or Generator; the only source of randomness.
        size: image side in pixels (square images; 32-64 for unit tests, 512 by default).
        eye: "R" (disc on the image's right) or "L" (mirrored).
        diseased: draw DR lesions; None draws it with probability ``prevalence``.
        prevalence: probability of disease when ``diseased`` is None.
        grade: force a DR grade 0-4 (overrides ``diseased``; 0 = healthy).
        traits: patient-level traits shared by both eyes; drawn from ``rng`` when None.

    Returns:
        :class:`SyntheticEye` with ``image`` ``(size, size, 3)`` uint8 and bool masks.
    """
    rng = as_generator(rng)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    traits = sample_traits(rng) if traits is None else traits
    # independent streams, drawn before the disease decision, so that the same seed gives the same
    # anatomy whatever the grade (render_eye(seed, grade=0) is the healthy twin of grade=3)
    r_anat, r_bg, r_ves, r_dis, r_les, r_post = (
        np.random.default_rng(int(s)) for s in rng.integers(0, 2 ** 63, size=6))
    if grade is None:
        sick = bool(rng.random() < prevalence) if diseased is None else bool(diseased)
        grade = int(rng.choice([1, 2, 3, 4], p=GRADE_PROBS)) if sick else 0
    elif not 0 <= int(grade) <= 4:
        raise ValueError(f"grade must be in 0..4, got {grade}")
    grade = int(grade)
    a = sample_anatomy(r_anat, size, eye)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fov = (xx - a.fov_centre[0]) ** 2 + (yy - a.fov_centre[1]) ** 2 <= a.fov_radius ** 2
    geo = TreeGeometry(a.od_centre, a.od_radii[0], a.fovea, a.fov_centre, a.fov_radius, a.pixel_mm)
    vessels = draw_tree(grow_tree(r_ves, geo), (size, size), ss=4 if size <= 1024 else 2)
    base = _background(r_bg, a, traits, xx, yy)
    base = _apply_vessels(base, vessels)
    base = _distractors(r_dis, base, a, traits, vessels, xx, yy)
    stamps, boat, oedema = _draw_lesions(r_les, a, traits, grade, vessels)
    op = {k: st.opacity(fov) for k, st in stamps.items()}
    boat_op = boat.opacity(fov) if boat is not None else None
    sick_img = _apply_lesions(base, op, boat_op, r_les)
    # pixel-wise finishing, identical for both renderings
    rc2 = ((xx - a.fov_centre[0]) ** 2 + (yy - a.fov_centre[1]) ** 2) / a.fov_radius ** 2
    illum = traits.brightness * (1.0 - r_post.uniform(0.25, 0.45) * rc2 ** 1.6) \
        * (1.0 + 0.07 * _noise_field(r_post, size, 3))
    noise = r_post.normal(0, 0.008, (size, size, 3)).astype(np.float32)
    floor = r_post.integers(0, 4, (size, size, 1), dtype=np.uint8)

    def finish(im: np.ndarray) -> np.ndarray:
        # float32 throughout: both renderings must round identically where they are equal
        out = im.astype(np.float32) * illum.astype(np.float32)[..., None] + noise
        out = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.where(fov[..., None], out, floor)

    image, lesion_free = finish(sick_img), finish(base)
    masks = {k: op[k] > 0 for k in LESION_KEYS}
    d_od = (((xx - a.od_centre[0]) / a.od_radii[0]) ** 2
            + ((yy - a.od_centre[1]) / a.od_radii[1]) ** 2)
    masks["OD"] = (d_od <= 1.0) & fov
    masks["vessels"] = vessels.mask & fov
    masks["fov"] = fov
    dme = _dme_from_mask(masks["EX"], a)
    if dme < 2:
        oedema = None
    abnormal = int(any(masks[k].any() for k in LESION_KEYS))
    labels = EyeLabels(abnormal, grade if abnormal else 0, dme)
    counts = {k: stamps[k].count for k in LESION_KEYS}
    return SyntheticEye(image, lesion_free, masks, labels, a, traits, oedema,
                        sick_img.astype(np.float32), counts,
                        np.maximum(vessels.vein, vessels.artery))

"""Diabetic-retinopathy lesions of a synthetic fundus eye (see the table and the exactness contract
in :mod:`retinassl.data.synthetic_fundus`): per-type opacity maps (:class:`Stamp`, whose support is
the lesion mask) drawn for a DR grade, blended into the lesion-free rendering, and the DME grade
read from the hard-exudate mask.
"""

from __future__ import annotations

import math

import numpy as np

from retinassl.data.synthetic_eye import LESION_KEYS, Anatomy, Oedema, PatientTraits, random_point
from retinassl.data.synthetic_vessels import VesselMaps


_RAMP = 0.1            # lesion opacity below this is cut; above it rescaled to start from 0


# -- small drawing helpers ----------------------------------------------------------------------
def opacity_box(alpha: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of the non-zero pixels of a 2-D array (None when all zero)."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(alpha.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


class Stamp:
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


# -- lesions ------------------------------------------------------------------------------------
GRADE_PROBS = (0.25, 0.35, 0.25, 0.15)           # grades 1-4 among diseased eyes


_DME_PROBS = {1: (1.0, 0.0, 0.0), 2: (0.5, 0.25, 0.25), 3: (0.25, 0.3, 0.45), 4: (0.25, 0.3, 0.45)}


def draw_lesions(rng: np.random.Generator, a: Anatomy, t: PatientTraits, grade: int,
                  v: VesselMaps) -> tuple[dict[str, Stamp], Stamp | None, Oedema | None]:
    """Lesion opacities per type for a given DR grade; also the oedema they imply."""
    s, mm = a.size, 1.0 / a.pixel_mm
    st = {k: Stamp(s) for k in LESION_KEYS}
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
        x, y = random_point(rng, a, 2.2, avoid=on_vessel)
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
            x, y = random_point(rng, a, 0.3, centre=(x, y))
        else:
            x, y = random_point(rng, a, 2.8)
        r = max(1.1, rng.uniform(0.07, 0.2) * mm)
        parts = [(x, y, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi))]
        for _ in range(int(rng.integers(0, 4))):
            parts.append((x + rng.normal(0, 0.5 * r), y + rng.normal(0, 0.5 * r),
                          r * rng.uniform(0.4, 0.8), r * rng.uniform(0.3, 0.7),
                          rng.uniform(0, math.pi)))
        st["HE"].ellipses(parts, rng.uniform(0.65, 0.95), fuzzy=False,
                          edge=max(0.8, 0.3 * r), shade=rng.uniform(0.2, 0.5))
    if grade == 4:
        boat = Stamp(s)
        x, y = random_point(rng, a, 3.0)
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
            x, y = random_point(rng, a, 0.3, centre=(float(p[0]), float(p[1])))
        else:
            x, y = random_point(rng, a, 2.5)
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


def apply_lesions(img: np.ndarray, op: dict[str, np.ndarray], boat: np.ndarray | None,
                   rng: np.random.Generator) -> np.ndarray:
    """Blend lesion opacities into ``img``: red lesions darken, exudates brighten."""
    def darken(im: np.ndarray, alpha: np.ndarray, factor: np.ndarray) -> np.ndarray:
        box = opacity_box(alpha)
        if box is not None:
            im[box] = im[box] * (1.0 - alpha[box][..., None] * (1.0 - factor))
        return im

    def blend(im: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
        box = opacity_box(alpha)
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


def dme_from_mask(ex: np.ndarray, a: Anatomy) -> int:
    """IDRiD DME risk from the hard-exudate mask: 0 none, 1 all > 1 DD from fovea, 2 within."""
    ys, xs = np.nonzero(ex)
    if len(xs) == 0:
        return 0
    dist_mm = np.hypot(xs - a.fovea[0], ys - a.fovea[1]) * a.pixel_mm
    return 2 if float(dist_mm.min()) <= a.disc_diameter_mm else 1

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
union of the lesion masks. :class:`~retinassl.data.synthetic_eye.SyntheticEye` carries both
renderings so that tests can check it. The lesions are drawn by :mod:`retinassl.data.synthetic_lesions`.
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

import cv2
import numpy as np

from retinassl.data.synthetic_eye import (LESION_KEYS, Anatomy, EyeLabels, PatientTraits, SyntheticEye,
                                         as_generator, random_point, sample_anatomy, sample_traits)
from retinassl.data.synthetic_lesions import (GRADE_PROBS, Stamp, apply_lesions, dme_from_mask, draw_lesions,
                                              opacity_box)
from retinassl.data.synthetic_vessels import TreeGeometry, VesselMaps, draw_tree, grow_tree


def _noise_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean noise with about ``cells`` features across, std ~1, ``(size, size)``."""
    cells = max(2, cells)
    low = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    up = cv2.resize(low, (size + 3 * size // cells, size + 3 * size // cells),
                    interpolation=cv2.INTER_CUBIC)
    off = (up.shape[0] - size) // 2
    return np.ascontiguousarray(up[off:off + size, off:off + size])


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
    bright = Stamp(s)
    dark = Stamp(s)
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
        p = random_point(rng, a, sigma_mm=3.0)
        r = max(0.7, rng.uniform(0.025, 0.06) * mm)
        bright.ellipses([(p[0], p[1], r, r * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi))],
                        rng.uniform(0.25, 0.5), fuzzy=True)
    # small dark spots: pigment clumps, greyer and fainter than microaneurysms
    for _ in range(int(rng.poisson(3))):
        p = random_point(rng, a, sigma_mm=3.5)
        r = max(0.8, rng.uniform(0.04, 0.08) * mm)
        dark.ellipses([(p[0], p[1], r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi))],
                      rng.uniform(0.3, 0.6), fuzzy=True)
    box = opacity_box(bright.alpha)
    if box is not None:
        ab = bright.alpha[box][..., None]
        img[box] = img[box] * (1 - ab) + np.array([1.0, 0.88, 0.7], np.float32) * ab
    box = opacity_box(dark.alpha)
    if box is not None:
        img[box] = img[box] * (1 - dark.alpha[box][..., None]
                               * np.array([0.35, 0.38, 0.3], np.float32))
    return img


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
    stamps, boat, oedema = draw_lesions(r_les, a, traits, grade, vessels)
    op = {k: st.opacity(fov) for k, st in stamps.items()}
    boat_op = boat.opacity(fov) if boat is not None else None
    sick_img = apply_lesions(base, op, boat_op, r_les)
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
    dme = dme_from_mask(masks["EX"], a)
    if dme < 2:
        oedema = None
    abnormal = int(any(masks[k].any() for k in LESION_KEYS))
    labels = EyeLabels(abnormal, grade if abnormal else 0, dme)
    counts = {k: stamps[k].count for k in LESION_KEYS}
    return SyntheticEye(image, lesion_free, masks, labels, a, traits, oedema,
                        sick_img.astype(np.float32), counts,
                        np.maximum(vessels.vein, vessels.artery))

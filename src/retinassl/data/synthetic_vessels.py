"""Procedural retinal vessel tree for the synthetic fundus generator.

The tree starts at the optic disc. Four main trunks, each an artery and a vein, leave the disc: the
superior and inferior temporal arcades curve around the macula, the nasal trunks run towards the
nasal periphery; a few thin papillomacular vessels head straight for the macula. Every vessel
branches (children get 55-80 % of the parent's width, Murray-like), tapers along its length, wiggles
smoothly, stops at the edge of the field of view, and stops short of the foveal avascular zone.

Geometry is generated in fundus pixel coordinates (``x`` = column, ``y`` = row, pixel centres at
integer coordinates), vectorised per vessel (cumulative sums of a smoothed random curvature), and
drawn with OpenCV thick polylines on a canvas supersampled ``ss`` times, then area-averaged down to
sub-pixel coverage in [0, 1]. The vessel mask is exactly ``coverage >= 0.5`` (a pixel is vessel when
at least half of its area is covered by a vessel), so vessels thinner than about half a pixel are
visible as faint lines but, as in manual annotations, are not in the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class Vessel:
    """One vessel centreline.

    Attributes:
        points: ``(N, 2)`` float ``(x, y)`` fundus pixel coordinates along the centreline.
        widths: ``(N,)`` vessel width in pixels at each point.
        artery: True for an artery (lighter, with a central light reflex), False for a vein.
        widths_mm: ``(N,)`` the same widths in millimetres.
    """

    points: np.ndarray
    widths: np.ndarray
    artery: bool
    widths_mm: np.ndarray


@dataclass
class VesselMaps:
    """Rendered vessel layers, all ``(H, W)`` float32 in [0, 1] (area coverage) unless stated.

    Attributes:
        vein: coverage of veins; ``vein_core``: coverage of the darker central half of veins.
        artery, artery_core: the same for arteries; ``reflex``: the arterial central light reflex.
        mask: ``(H, W)`` bool, ``max(vein, artery) >= 0.5``.
        vessels: the centrelines (for lesion placement: flame haemorrhages, cotton-wool spots).
    """

    vein: np.ndarray
    vein_core: np.ndarray
    artery: np.ndarray
    artery_core: np.ndarray
    reflex: np.ndarray
    mask: np.ndarray
    vessels: list[Vessel] = field(default_factory=list)


@dataclass(frozen=True)
class TreeGeometry:
    """Where the tree grows, in fundus pixels.

    Attributes:
        od: ``(x, y)`` optic-disc centre; ``od_radius``: disc radius (pixels).
        fovea: ``(x, y)`` foveal centre.
        fov_centre, fov_radius: the circular field of view.
        px_mm: pixel size in millimetres.
    """

    od: tuple[float, float]
    od_radius: float
    fovea: tuple[float, float]
    fov_centre: tuple[float, float]
    fov_radius: float
    px_mm: float


def _smooth_noise(rng: np.random.Generator, n: int, corr: int, scale: float) -> np.ndarray:
    """``n`` samples of zero-mean noise smoothed over ``corr`` samples, std about ``scale``."""
    if n <= 0:
        return np.zeros(0)
    raw = rng.standard_normal(n + 2 * corr)
    kernel = np.hanning(2 * corr + 1)
    kernel /= np.sqrt((kernel ** 2).sum())
    return np.convolve(raw, kernel, mode="same")[corr:corr + n] * scale


def _truncate(points: np.ndarray, widths: np.ndarray, geo: TreeGeometry, faz_px: float,
              grace: int) -> int:
    """Number of leading points before the path leaves the FOV (plus margin), enters the foveal
    avascular zone, or (if wider than 45 um) enters the central macula (1.4 mm radius)."""
    cx, cy = geo.fov_centre
    out = np.hypot(points[:, 0] - cx, points[:, 1] - cy) > geo.fov_radius * 1.04
    rf = np.hypot(points[:, 0] - geo.fovea[0], points[:, 1] - geo.fovea[1])
    faz = (rf < faz_px) | ((rf < 1.4 / geo.px_mm) & (widths > 0.045 / geo.px_mm))
    bad = out | faz
    bad[:grace] = False
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else len(points)


class _Grower:
    """Grows vessels and their branches; all randomness from one Generator."""

    def __init__(self, rng: np.random.Generator, geo: TreeGeometry, min_width: float) -> None:
        self.rng = rng
        self.geo = geo
        self.step = max(0.6, 0.045 / geo.px_mm)          # ~45 um per step, at least 0.6 px
        self.min_width = min_width
        self.faz_px = 0.35 / geo.px_mm                   # visible vessels stop ~0.35 mm from fovea
        self.vessels: list[Vessel] = []

    # -- one vessel from a heading sequence ------------------------------------------------------
    def walk(self, start: np.ndarray, heading: float, width: float, artery: bool, depth: int,
             curvature: float = 0.0, length_mm: float = 14.0) -> None:
        """Grow a free vessel: smooth random curvature around a mean ``curvature`` (rad/mm)."""
        n = max(2, int(length_mm / (self.step * self.geo.px_mm)))
        step_mm = self.step * self.geo.px_mm
        corr = max(3, int(0.8 / step_mm))
        kappa = curvature + _smooth_noise(self.rng, n, corr, 0.45)     # rad/mm
        theta = heading + np.cumsum(kappa * step_mm)
        pts = start + np.cumsum(np.stack([np.cos(theta), np.sin(theta)], 1) * self.step, axis=0)
        pts = np.vstack([start[None], pts])
        self._finish(pts, width, artery, depth)

    def guided(self, pts: np.ndarray, width: float, artery: bool, depth: int) -> None:
        """Add a vessel along a precomputed centreline (the arcades)."""
        self._finish(pts, width, artery, depth)

    # -- shared: taper, truncate, branch ---------------------------------------------------------
    def _finish(self, pts: np.ndarray, width: float, artery: bool, depth: int) -> None:
        seg = np.hypot(*np.diff(pts, axis=0).T)
        arc_mm = np.concatenate([[0.0], np.cumsum(seg)]) * self.geo.px_mm
        widths = width * np.exp(-0.045 * arc_mm)                     # slow taper
        keep = _truncate(pts, widths, self.geo, self.faz_px, grace=3)
        pts, arc_mm, widths = pts[:keep], arc_mm[:keep], widths[:keep]
        if len(pts) < 3:
            return
        # branch points: every 0.9-2.2 mm, alternating sides, with a width drop after each
        rng = self.rng
        next_branch = rng.uniform(0.6, 1.6)
        side = rng.choice([-1.0, 1.0])
        drop = np.ones(len(pts))
        children = []
        for k in range(1, len(pts) - 2):
            if arc_mm[k] < next_branch:
                continue
            next_branch = arc_mm[k] + rng.uniform(1.1, 2.6)
            side = -side if rng.random() < 0.75 else side
            ratio = rng.uniform(0.5, 0.78)
            children.append((k, side, ratio))
            drop[k:] *= rng.uniform(0.86, 0.95)
        widths = widths * drop
        alive = widths >= self.min_width * 0.6
        last = int(np.flatnonzero(alive)[-1]) + 1 if alive.any() else 0
        if last < 3:
            return
        self.vessels.append(Vessel(pts[:last].astype(np.float32), widths[:last].astype(np.float32),
                                   artery, (widths[:last] * self.geo.px_mm).astype(np.float32)))
        if depth <= 0:
            return
        for k, side, ratio in children:
            if k >= last - 1:
                break
            child_w = widths[k] * ratio
            if child_w < self.min_width:
                continue
            d = pts[k + 1] - pts[k - 1]
            heading = math.atan2(d[1], d[0]) + side * rng.uniform(0.55, 1.25)
            self.walk(pts[k], heading, child_w, artery, depth - 1,
                      curvature=-side * rng.uniform(0.0, 0.25),
                      length_mm=1.0 + rng.uniform(35.0, 70.0) * child_w * self.geo.px_mm)


def _arcade(rng: np.random.Generator, geo: TreeGeometry, up: float, q_fovea_mm: float,
            step_px: float) -> np.ndarray:
    """Centreline of a temporal arcade: a power-law curve from the disc around the macula.

    In a frame with origin at the disc centre, ``s`` along the disc->fovea axis and ``q``
    perpendicular (``up`` = -1 superior, +1 inferior), ``q = q_f * ((s + s0) / (D + s0)) ** p``,
    which leaves the disc vertically, passes ``q_f`` mm from the fovea and opens into the periphery.
    """
    od = np.array(geo.od)
    fov = np.array(geo.fovea)
    axis = fov - od
    dist_px = float(np.hypot(*axis))
    t = axis / dist_px
    n = np.array([-t[1], t[0]])                       # +n points down in the image for a right eye
    if n[1] < 0:
        n = -n
    dist_mm = dist_px * geo.px_mm
    s0 = rng.uniform(0.05, 0.25)
    power = rng.uniform(0.55, 0.8)
    s = np.linspace(-s0, 16.0, 4000)
    q = q_fovea_mm * ((s + s0) / (dist_mm + s0)) ** power
    # smooth wiggles along the path
    q = q + sum(rng.uniform(0.04, 0.12) * np.sin(2 * np.pi * s / rng.uniform(1.5, 4.0)
                                                 + rng.uniform(0, 2 * np.pi)) for _ in range(3)) \
        * np.clip(s / 1.0, 0, 1)
    pts = od + (np.outer(s, t) + np.outer(up * q, n)) / geo.px_mm
    # resample at uniform arc length
    seg = np.hypot(*np.diff(pts, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    samples = np.arange(0.0, arc[-1], step_px)
    return np.stack([np.interp(samples, arc, pts[:, 0]), np.interp(samples, arc, pts[:, 1])], 1)


def grow_tree(rng: np.random.Generator, geo: TreeGeometry) -> list[Vessel]:
    """Generate all vessel centrelines of one eye.

    Args:
        rng: the source of every random choice.
        geo: disc, fovea and field-of-view geometry.

    Returns:
        The vessels, trunks first.
    """
    px_mm = geo.px_mm
    min_width = max(0.25, 0.022 / px_mm)
    grower = _Grower(rng, geo, min_width)
    od = np.array(geo.od, dtype=float)
    t = np.array(geo.fovea, dtype=float) - od
    t /= np.hypot(*t)
    temporal = math.atan2(t[1], t[0])
    vein_w, art_w = rng.uniform(0.13, 0.16) / px_mm, rng.uniform(0.095, 0.12) / px_mm
    for up in (-1.0, 1.0):
        for artery, w in ((False, vein_w), (True, art_w)):
            q_f = rng.uniform(2.3, 3.3) + (0.15 if artery else 0.0)
            start = od + rng.normal(0, 0.08, 2) / px_mm
            pts = _arcade(rng, geo, up, q_f, grower.step) + (start - od)
            grower.guided(pts, w * rng.uniform(0.95, 1.05), artery, depth=4)
        # nasal trunks: leave the disc up/down and curve nasally
        vertical = np.array([0.0, up])
        nasal = -t
        turn = float(np.sign(vertical[0] * nasal[1] - vertical[1] * nasal[0]))
        for artery, w in ((False, vein_w * 0.75), (True, art_w * 0.75)):
            a = rng.uniform(0.3, 0.8)                  # angle from vertical towards nasal
            d = vertical * math.cos(a) + nasal * math.sin(a)
            start = od + rng.normal(0, 0.08, 2) / px_mm
            grower.walk(start, math.atan2(d[1], d[0]), w, artery, depth=3,
                        curvature=turn * rng.uniform(0.05, 0.2), length_mm=16.0)
    # thin papillomacular vessels heading for the macula
    for _ in range(int(rng.integers(1, 4))):
        heading = temporal + rng.uniform(-0.45, 0.45)
        start = od + np.array([math.cos(heading), math.sin(heading)]) * geo.od_radius * 0.5
        grower.walk(start, heading, rng.uniform(0.03, 0.05) / px_mm, bool(rng.random() < 0.5),
                    depth=0, length_mm=rng.uniform(2.0, 4.0))
    return grower.vessels


def draw_tree(vessels: list[Vessel], shape: tuple[int, int], ss: int = 4) -> VesselMaps:
    """Rasterise vessels into coverage maps (see :class:`VesselMaps`).

    Args:
        vessels: centrelines with widths in pixels.
        shape: ``(H, W)`` of the output.
        ss: supersampling factor of the drawing canvas.
    """
    h, w = shape
    names = ("vein", "vein_core", "artery", "artery_core", "reflex")
    canvases = {k: np.zeros((h * ss, w * ss), np.uint8) for k in names}
    # group polyline runs by (canvas, thickness) so each thickness is one cv2.polylines call;
    # drawing thin before thick keeps a thick vessel's core intact at crossings
    runs: dict[tuple[str, int], list[np.ndarray]] = {}
    shift = 4                                        # sub-pixel vertex precision (1/16 px)
    for v in vessels:
        base = (v.points + 0.5) * ss - 0.5           # pixel-centre convention on the canvas
        fixed = np.round(base * (1 << shift)).astype(np.int32)
        layers = [("artery" if v.artery else "vein", 1.0),
                  ("artery_core" if v.artery else "vein_core", 0.6)]
        if v.artery:
            layers.append(("reflex", 0.22))
        for name, frac in layers:
            thick = np.maximum(0, np.round(v.widths * frac * ss)).astype(int)
            if name == "reflex":
                thick = np.where(v.widths >= 2.5, thick, 0)
            # the outer canvases are pure geometry (255); the others carry the contrast, which
            # fades for thin vessels (quantised so that runs stay long)
            value = np.full(len(thick), 255) if frac == 1.0 else \
                (np.round(np.clip((v.widths_mm - 0.02) / 0.1, 0.15, 1.0) * 8) * 31.875).astype(int)
            key = thick * 256 + value
            change = np.flatnonzero(np.diff(key)) + 1
            bounds = np.concatenate([[0], change, [len(thick)]])
            for a, b in zip(bounds[:-1], bounds[1:]):
                th = int(thick[a])
                if th < 1:
                    continue
                seg = fixed[a:min(b + 1, len(thick))]
                if len(seg) >= 2:
                    runs.setdefault((name, th, int(value[a])), []).append(seg.reshape(-1, 1, 2))
    for (name, th, val) in sorted(runs, key=lambda k: (k[2], k[1])):
        cv2.polylines(canvases[name], runs[(name, th, val)], False, val, thickness=th,
                      lineType=cv2.LINE_8, shift=shift)
    maps = {k: cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
            for k, c in canvases.items()}
    mask = np.maximum(maps["vein"], maps["artery"]) >= 0.5
    return VesselMaps(maps["vein"], maps["vein_core"], maps["artery"], maps["artery_core"],
                      maps["reflex"], mask, vessels)

"""Quality flags of graph-search boundaries (:mod:`retinassl.oct.graph_search`): over the central
``assess_fraction`` of the A-scans, jumps (a depth change steeper than any retinal contour), a
boundary at the top or bottom of the image, a thickness outside a plausible range, low contrast (the
mean gradient along a boundary against the image's gradient noise), mostly undefined
boundaries, and an ILM held at its search bound above the outer band (the ILM was not found above
it: a macular hole, foveal atrophy, or a foveal floor without an edge).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from retinassl.oct.graph_search_config import GraphSearchConfig


@dataclass(frozen=True)
class BScanQuality:
    """Quality of one B-scan's boundaries; ``clean`` when no flag is raised. Fractions are over
    the central ``assess_fraction`` of the A-scans.

    Attributes:
        jump_fraction: share of columns at a jump of the ILM or BM (see ``jump_um``).
        edge_fraction: share of columns where a boundary is within ``edge_rows`` of the top or bottom.
        out_of_range_fraction: share of columns whose thickness is outside ``plausible_um``.
        undefined_fraction: share of columns where a boundary is undefined (NaN).
        bound_fraction: share of columns where the ILM lies at its lowest allowed cut
            (``ilm_above_band_um`` above the outer band).
        contrast_ilm, contrast_bm: mean directional gradient along the boundary / robust standard
            deviation of the vertical gradient of the image (0 for a blank image).
        jumps, at_edge, implausible_thickness, low_contrast, mostly_undefined, ilm_at_bound: the flags.
    """

    jump_fraction: float
    edge_fraction: float
    out_of_range_fraction: float
    undefined_fraction: float
    bound_fraction: float
    contrast_ilm: float
    contrast_bm: float
    jumps: bool
    at_edge: bool
    implausible_thickness: bool
    low_contrast: bool
    mostly_undefined: bool
    ilm_at_bound: bool

    @property
    def clean(self) -> bool:
        return not self.reasons

    @property
    def reasons(self) -> list[str]:
        """The raised flags, by name."""
        return [n for n in FLAG_NAMES if getattr(self, n)]

    def as_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}


FLAG_NAMES: tuple[str, ...] = ("jumps", "at_edge", "implausible_thickness", "low_contrast",
                               "mostly_undefined", "ilm_at_bound")


def _jump_columns(rows: np.ndarray, span: int, limit: float) -> np.ndarray:
    """``(W,)`` bool: columns ``c`` (and ``c + span``) where ``|rows[c + span] - rows[c]| > limit``
    (NaN columns never count)."""
    w = len(rows)
    out = np.zeros(w, dtype=bool)
    span = max(1, min(span, w - 1))
    step = np.abs(rows[span:] - rows[:-span])
    big = np.where(np.isfinite(step), step, 0.0) > limit
    out[:-span] |= big
    out[span:] |= big
    return out


def assess_quality(ilm: np.ndarray, bm: np.ndarray, depth: int, axial_um: float, lateral_um: float,
                   config: GraphSearchConfig, contrast_ilm: float, contrast_bm: float,
                   ilm_at_bound: np.ndarray | None = None) -> BScanQuality:
    """Quality flags of one B-scan's boundaries (``(W,)`` rows each, NaN = undefined; see
    :class:`BScanQuality`). Fractions are over the central ``config.assess_fraction`` of the
    columns; undefined columns are neither jumps, at the edge nor out of range.

    The plausible-thickness range is in micrometres; with the nominal spacing it is converted with
    that spacing, so the check is only as good as the nominal spacing.
    """
    c = config
    span = max(1, int(round(c.jump_span_um / lateral_um)))
    jump_rows = (c.jump_um + c.jump_slope * span * lateral_um) / axial_um
    jumped = _jump_columns(ilm, span, jump_rows) | _jump_columns(bm, span, jump_rows)
    e = c.edge_rows
    with np.errstate(invalid="ignore"):
        edge = (ilm <= e) | (bm >= depth - 1 - e) | (ilm >= depth - 1 - e)
        th_um = (bm - ilm) * axial_um
        out = (th_um < c.plausible_um[0]) | (th_um > c.plausible_um[1])
    undefined = ~(np.isfinite(ilm) & np.isfinite(bm))
    w = len(ilm)
    keep = max(1, int(round(w * c.assess_fraction)))
    sel = slice((w - keep) // 2, (w - keep) // 2 + keep)
    bound = np.zeros(w, dtype=bool) if ilm_at_bound is None else (np.asarray(ilm_at_bound, bool) & ~undefined)
    jf, ef, of, uf, bf = (float(x[sel].mean()) for x in (jumped, edge, out, undefined, bound))
    return BScanQuality(
        jump_fraction=jf, edge_fraction=ef, out_of_range_fraction=of, undefined_fraction=uf,
        bound_fraction=bf,
        contrast_ilm=float(contrast_ilm), contrast_bm=float(contrast_bm),
        jumps=jf > c.max_jump_fraction, at_edge=ef > c.max_edge_fraction,
        implausible_thickness=of > c.max_out_of_range,
        low_contrast=min(contrast_ilm, contrast_bm) < c.min_contrast,
        mostly_undefined=uf > c.max_undefined, ilm_at_bound=bf > c.max_bound_fraction)

"""Parameters of the annotation-free ILM and Bruch's membrane graph search
(:func:`retinassl.oct.graph_search.detect_boundaries`) and of the quality flags of its result
(:func:`retinassl.oct.boundary_quality.assess_quality`), in physical units.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraphSearchConfig:
    """Parameters of :func:`detect_boundaries` (physical units; converted with the pixel spacing).

    Attributes:
        smooth_axial_um, smooth_lateral_um: Gaussian sigma of the speckle smoothing.
        band_smooth_um: axial sigma that merges IS/OS and RPE into one band (step 4), also used
            to tell vitreous from retina (step 3).
        vitreous_decay_um: the ILM gain is multiplied by ``exp(-bright / vitreous_decay_um)``,
            ``bright`` the micrometres of tissue-bright rows above the cut, and by the fraction of
            tissue rows in the ``min_thickness_um`` below it (step 3).
        outer_band_depth_um: the first trace of the outer band (which bounds the ILM from below)
            weighs the band by ``1 - exp(-tissue / outer_band_depth_um)``, ``tissue`` the
            micrometres of tissue rows above it: the band under the retina, not a bright nerve
            fibre layer at its top.
        ilm_above_band_um: the ILM is searched at least this far above that first trace of the outer
            band (and at least ``min_thickness_um``): the foveal floor of a normal eye is about
            200-250 um above the band; without the bound the IS/OS edge under a dim foveal pit can
            take the ILM's place.
        max_slope: largest boundary slope (micrometres of depth per micrometre along the B-scan);
            gives ``max_jump`` rows per column (at least 1).
        smoothness: penalty per row of change between neighbouring columns, in units of the
            normalised gradient (0..1).
        min_thickness_um: smallest ILM-BM distance searched.
        max_thickness_um: largest ILM-BM distance searched.
        deeper_band_bonus: added to the normalised outer-band brightness (0..1) in proportion to the
            depth below the ILM (0 at ``min_thickness_um``, this value at ``max_thickness_um``; the
            same slope in every column, wherever the image ends): the RPE is the lowest bright band.
        bm_window_um: ``(above, below)`` the outer-band ridge where Bruch's membrane is searched.
        plausible_um: per-column thickness range considered plausible (quality flag).
        max_out_of_range: largest fraction of columns outside ``plausible_um`` for a clean scan.
        jump_um, jump_slope, jump_span_um: a boundary changing in depth by more than
            ``jump_um + jump_slope * span`` over ``span`` = ``jump_span_um`` (at least one A-scan)
            along the B-scan is a jump: a step steeper than any retinal contour.
        max_jump_fraction: largest fraction of jump columns (either boundary) for a clean scan.
        weak_contrast: a column is undefined where the directional gradient along a boundary
            (running mean over ``weak_window_um``) is below this many robust standard deviations
            of the image's vertical gradient (no edge there: optic disc, signal loss, the vitreous
            beside a cut-off retina).
        max_gap_um: undefined runs up to this long inside a B-scan keep the bridged path (vessel
            shadows); longer runs, and runs at either end, are NaN.
        max_undefined: largest fraction of undefined columns for a clean scan.
        max_bound_fraction: largest fraction of columns with the ILM held at its bound
            (``ilm_above_band_um`` above the outer band) for a clean scan.
        assess_fraction: the flags look at the central ``assess_fraction`` of the columns (B-scans
            are centred on the fovea; the outer parts of a wide scan may hold the optic disc or
            leave the image).
        edge_rows: a boundary within this many rows of the top or bottom is at the image edge.
        max_edge_fraction: largest fraction of columns at the edge for a clean scan.
        min_contrast: smallest contrast (mean directional gradient along a boundary over the robust
            standard deviation of the image's vertical gradient) for a clean scan.
    """

    smooth_axial_um: float = 4.0
    smooth_lateral_um: float = 30.0
    band_smooth_um: float = 15.0
    vitreous_decay_um: float = 40.0
    outer_band_depth_um: float = 100.0
    ilm_above_band_um: float = 120.0
    max_slope: float = 2.0
    smoothness: float = 0.05
    min_thickness_um: float = 80.0
    max_thickness_um: float = 1000.0
    deeper_band_bonus: float = 0.3
    bm_window_um: tuple[float, float] = (10.0, 60.0)
    plausible_um: tuple[float, float] = (100.0, 900.0)
    max_out_of_range: float = 0.05
    jump_um: float = 50.0
    jump_slope: float = 0.7
    jump_span_um: float = 40.0
    max_jump_fraction: float = 0.02
    weak_contrast: float = 3.0
    weak_window_um: float = 50.0
    max_gap_um: float = 300.0
    max_undefined: float = 0.25
    max_bound_fraction: float = 0.02
    assess_fraction: float = 0.5
    edge_rows: int = 2
    max_edge_fraction: float = 0.01
    min_contrast: float = 4.0

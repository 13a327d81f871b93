"""PNG figures of thickness maps and segmented B-scans (matplotlib, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinassl.figures.plots import plt, save_figure
from retinassl.oct.thickness import ETDRS_DIAMETERS_MM


def thickness_png(tmap: np.ndarray, path: str | Path, *, localizer: np.ndarray | None = None,
                  extent: tuple[float, float, float, float] | None = None,
                  fovea: tuple[float, float] | None = None,
                  etdrs_radii_px: tuple[float, ...] | None = None, title: str = "retinal thickness",
                  vmin: float = 150.0, vmax: float = 500.0) -> Path:
    """The map (micrometres, undefined transparent) over its localizer, with a colour bar, the fovea
    and the ETDRS circles.

    Args:
        tmap: ``(S, S)`` micrometres, NaN or 0 = undefined.
        path: output PNG.
        localizer: the infrared image drawn underneath (same field as the map), optional.
        extent: ``(left, right, bottom, top)`` of the map in localizer pixels (for ``imshow``).
        fovea: ``(x, y)`` in the same coordinates as ``extent``.
        etdrs_radii_px: circle radii (``extent`` units) to draw around the fovea.
    """
    m = np.where(np.isfinite(tmap) & (tmap > 0), tmap, np.nan)
    if np.isfinite(m).any():        # keep the usual scale, widen it for unusual maps
        vmin, vmax = min(vmin, float(np.nanmin(m))), max(vmax, float(np.nanmax(m)))
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    if localizer is not None:
        ax.imshow(localizer, cmap="gray", extent=extent)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="jet", vmin=vmin, vmax=vmax, alpha=0.75
                   if localizer is not None else 1.0, extent=extent, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("thickness (µm)")
    if fovea is not None:
        ax.plot([fovea[0]], [fovea[1]], "w+", ms=10, mew=1.5)
        for r in etdrs_radii_px or ():
            ax.add_patch(plt.Circle(fovea, r, fill=False, color="white", lw=0.8))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return save_figure(fig, path)


def etdrs_radii(mm_per_pixel: float) -> tuple[float, ...]:
    """ETDRS circle radii in pixels of ``mm_per_pixel``."""
    return tuple(d / 2 / mm_per_pixel for d in ETDRS_DIAMETERS_MM)


def bscan_png(bscan: np.ndarray, rows: dict[str, np.ndarray], path: str | Path,
              truth: dict[str, np.ndarray] | None = None, title: str = "") -> Path:
    """A B-scan with boundary rows (predicted: solid; truth: dashed)."""
    fig, ax = plt.subplots(figsize=(6, 6 * bscan.shape[0] / max(bscan.shape[1], 1) + 0.4))
    ax.imshow(bscan, cmap="gray", aspect="auto")
    cols = np.arange(bscan.shape[1])
    colours = plt.cm.tab10(np.linspace(0, 1, max(len(rows), 1)))
    for (name, r), c in zip(rows.items(), colours):
        ax.plot(cols, r, color=c, lw=0.9, label=name)
        if truth is not None and name in truth:
            ax.plot(cols, truth[name], color=c, lw=0.8, ls="--")
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return save_figure(fig, path)

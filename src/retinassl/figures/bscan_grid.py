"""A grid of B-scans with two or more methods' ILM and Bruch's-membrane boundaries drawn on each,
so that a reader can judge them side by side (the annotation-free graph search of
:mod:`retinassl.oct.graph_search` against a learned layer model, before and after adaptation).

Each panel is one B-scan (row 0 on the vitreous side) with every method's ILM and BM rows in that
method's colour, titled with a caller-given label (an index or a salted label, never a file name:
real exports are often named after the patient), the reference method's quality flags and each
other method's mean absolute disagreement with the reference in pixels. The sample shown is drawn
by :func:`sample_bscans` (seeded). PNGs are palette-quantised so that a 16-panel grid of speckled
B-scans stays well under a megabyte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinassl.atomic import atomic_path
from retinassl.figures.plots import plt

# (colour, line width, line style) per method in the order given: the reference drawn wide
# underneath, the others thin on top (where they agree the reference shows as a rim around them)
METHOD_STYLES: tuple[tuple[str, float, object], ...] = (
    ("#ff2020", 2.0, "-"), ("#00e5ff", 0.9, "-"), ("#ffd000", 0.9, (0, (3, 1.5))),
    ("#7CFC00", 0.9, (0, (1, 1))))


@dataclass
class BScanPanel:
    """One B-scan of the grid.

    Attributes:
        image: ``(D, W)`` B-scan (uint8 0..255, or float scaled by its range).
        label: the panel's name (an index or a salted label, never a file name).
        boundaries: method name -> ``(2, W)`` rows (ILM, BM; NaN = undefined), in the B-scan's grid.
        flags: the reference method's raised quality flags (empty = clean).
        note: a short extra word for the title (e.g. ``"DME"``, ``"held out"``), optional.
    """

    image: np.ndarray
    label: str
    boundaries: dict[str, np.ndarray]
    flags: Sequence[str] = ()
    note: str = ""


def sample_bscans(n_total: int, n: int, seed: int) -> np.ndarray:
    """``min(n, n_total)`` distinct indices of ``range(n_total)`` drawn with ``seed``, ascending."""
    if n_total < 1 or n < 1:
        raise ValueError(f"need at least one B-scan to draw and to draw from, got n={n} of {n_total}")
    rng = np.random.default_rng([int(seed), 20])
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False))


def mean_disagreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean absolute difference (pixels) of two ``(2, W)`` ILM/BM row arrays over the columns where
    both define the boundary: ``ilm``, ``bm`` and their mean ``mean`` (NaN where none is defined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != 2:
        raise ValueError(f"expected two (2, W) row arrays of one shape, got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    out = {}
    for k, name in enumerate(("ilm", "bm")):
        out[name] = float(np.abs(a[k] - b[k])[both[k]].mean()) if both[k].any() else float("nan")
    out["mean"] = float(np.nanmean([out["ilm"], out["bm"]])) if np.isfinite([out["ilm"], out["bm"]]).any() \
        else float("nan")
    return out


def _unit(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"a B-scan must be a (depth, width) array, got shape {img.shape}")
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) / 255.0
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    return (img.astype(np.float32) - lo) / (hi - lo) if hi > lo else np.zeros(img.shape, np.float32)


def panel_title(panel: BScanPanel, reference: str) -> str:
    """``label · note · flags`` on the first line, each method's disagreement with ``reference``
    (:func:`mean_disagreement`'s mean of ILM and BM, pixels) on the second."""
    head = " · ".join(p for p in (panel.label, panel.note, ", ".join(panel.flags) or "clean") if p)
    ref = panel.boundaries.get(reference)
    parts = []
    for name, rows in panel.boundaries.items():
        if name == reference or ref is None:
            continue
        parts.append(f"{name} {mean_disagreement(ref, rows)['mean']:.1f} px")
    return head + ("\nvs " + reference + ": " + " · ".join(parts) if parts else "")


def boundary_grid_figure(panels: Sequence[BScanPanel], columns: int = 4, panel_width: float = 4.2,
                         title: str = "", reference: str | None = None) -> plt.Figure:
    """The grid (see the module docstring): one axes per panel, ``columns`` to a row; methods in the
    order of the first panel's ``boundaries`` (the first is the ``reference`` unless given), styled by
    :data:`METHOD_STYLES`; a legend of the methods under the title."""
    if not panels:
        raise ValueError("no B-scan to draw")
    methods = list(panels[0].boundaries)
    if len(methods) > len(METHOD_STYLES):
        raise ValueError(f"at most {len(METHOD_STYLES)} methods per figure, got {len(methods)}")
    reference = reference or methods[0]
    styles = dict(zip(methods, METHOD_STYLES))
    columns = max(1, min(columns, len(panels)))
    n_rows = -(-len(panels) // columns)
    # panel height / width: the B-scans' own, squashed to at most 0.6 for deep narrow ones (drawn
    # with aspect "auto", as OCT viewers stretch B-scans anyway)
    aspect = min(0.6, max(p.image.shape[0] / max(p.image.shape[1], 1) for p in panels))
    fig, axes = plt.subplots(n_rows, columns, squeeze=False,
                             figsize=(panel_width * columns, (panel_width * aspect + 0.4) * n_rows + 0.55))
    for ax in axes.ravel()[len(panels):]:
        fig.delaxes(ax)
    for ax, panel in zip(axes.ravel(), panels):
        d, w = panel.image.shape
        ax.imshow(_unit(panel.image), cmap="gray", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        cols = np.arange(w)
        for name, rows in panel.boundaries.items():
            colour, lw, ls = styles.get(name, METHOD_STYLES[-1])
            rows = np.asarray(rows, dtype=np.float64)
            if rows.shape != (2, w):
                raise ValueError(f"{name}'s boundaries of {panel.label} are {rows.shape}, expected (2, {w})")
            for r in rows:
                ax.plot(cols, r, color=colour, lw=lw, ls=ls, solid_capstyle="butt")
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(d - 0.5, -0.5)
        ax.set_title(panel_title(panel, reference), fontsize=6.5, loc="left")
        ax.set_axis_off()
    handles = [plt.Line2D([], [], color=c, lw=max(lw, 1.5), ls=ls, label=f"{m} (ILM, BM)")
               for m, (c, lw, ls) in styles.items()]
    height = fig.get_figheight()
    top = 0.05 / height                                   # inches from the top, as figure fractions
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - top, va="top")
        top += 0.25 / height
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0 - top), borderaxespad=0.0)
    fig.tight_layout(rect=(0, 0, 1, 1.0 - top - 0.25 / height), h_pad=0.6, w_pad=0.4)
    return fig


def _palette(colours: int):
    """A ``P``-mode PIL image holding the palette: :data:`METHOD_STYLES`' colours, then greys."""
    from PIL import Image

    fixed = [tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c, _, _ in METHOD_STYLES]
    n_grey = max(2, min(256, colours) - len(fixed))
    greys = [(v, v, v) for v in np.linspace(0, 255, n_grey).round().astype(int).tolist()]
    entries = (fixed + greys + [(0, 0, 0)] * 256)[:256]
    image = Image.new("P", (1, 1))
    image.putpalette([v for rgb in entries for v in rgb])
    return image


def boundary_grid_png(panels: Sequence[BScanPanel], path: str | Path, *, columns: int = 4,
                      panel_width: float = 4.2, title: str = "", reference: str | None = None,
                      dpi: int = 110, colours: int = 128) -> Path:
    """:func:`boundary_grid_figure` written atomically as a PNG of ``colours`` palette entries: the
    method colours exactly, the rest evenly spaced greys (a 16-panel grid of 704 x 287 B-scans is
    under a megabyte instead of several)."""
    from PIL import Image

    fig = boundary_grid_figure(panels, columns=columns, panel_width=panel_width, title=title,
                               reference=reference)
    try:
        fig.set_dpi(dpi)
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
    image = Image.fromarray(rgb).quantize(palette=_palette(colours), dither=Image.Dither.NONE)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path

"""The building blocks of report sections: a titled block of HTML, rounded numbers, tables, figures
with captions and figure galleries.

Every module that contributes a section to the report imports these; :mod:`retinassl.report.html`
assembles the sections into the page.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retinassl.io.rundir import RunDir


@dataclass
class Section:
    title: str
    html: str


def number(value: float | None) -> str:
    """A rounded number for a table or a sentence: 3 decimals below 10, 1 below 100, none above
    ("" for a missing or non-finite value)."""
    if value is None or not math.isfinite(float(value)):
        return ""
    value = float(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def table_html(frame: pd.DataFrame, text_columns: tuple[str, ...] = (), cls: str = "") -> str:
    """An HTML table (text columns left-aligned, numbers rounded by :func:`number`)."""
    head = "".join(f'<th class="{"t" if c in text_columns else ""}">{html.escape(str(c))}</th>'
                   for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = row[c]
            text = number(v) if isinstance(v, (float, np.floating)) and c not in text_columns else str(v)
            cells.append(f'<td class="{"t" if c in text_columns else ""}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><tr>{head}</tr>{"".join(body)}</table>'


def figure_html(name: str, alt: str, caption: str = "", cls: str = "wide") -> str:
    """A figure of ``report/figures/<name>`` at the page's width with a caption (HTML, trusted:
    callers escape what they interpolate)."""
    return (f'<figure class="{cls}"><img src="figures/{html.escape(name)}" alt="{html.escape(alt)}">'
            + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>")


def colour_scale_html(low: str, high: str, note: str = "", cmap: str = "inferno") -> str:
    """A horizontal colour bar of ``cmap`` (the overlays' colour map) from ``low`` to ``high``."""
    from matplotlib import colormaps

    stops = ", ".join("rgb({}, {}, {})".format(*(int(255 * c) for c in colormaps[cmap](t)[:3]))
                      for t in np.linspace(0, 1, 11))
    return (f'<div class="scale"><span>{html.escape(low)}</span><span class="bar" style="background:'
            f'linear-gradient(to right, {stops})"></span><span>{html.escape(high)}</span>'
            + (f' <span class="note">{note}</span>' if note else "") + "</div>")


def gallery_section(run: RunDir, prefix: str, title: str, note: str = "", columns: int = 2,
                    natural: bool = False, scale: str = "") -> Section | None:
    """A gallery of the PNG figures whose names start with ``prefix``, ``columns`` to a row (1: each
    at the page's width, for figures that are rows of panels; ``natural``: at their own size, at
    least 60 % of the page's width and at most all of it); ``scale``: HTML under the note (a colour
    bar)."""
    figures = sorted((run.report_dir / "figures").glob(f"{prefix}*.png"))
    if not figures:
        return None
    items = "".join(f'<figure><img src="figures/{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                    f"<figcaption>{html.escape(p.stem.removeprefix(prefix))}</figcaption></figure>"
                    for p in figures)
    return Section(title, (f'<p class="note">{note}</p>' if note else "") + scale
                   + f'<div class="gallery c{columns}{" natural" if natural else ""}">{items}</div>')

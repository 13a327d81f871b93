"""The building blocks of report sections: a titled block of HTML, small tables, figure galleries.

Every module that contributes a section to the report imports these; :mod:`retinassl.report.html`
assembles the sections into the page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retinassl.io.rundir import RunDir


@dataclass
class Section:
    title: str
    html: str


def table_html(frame: pd.DataFrame, text_columns: tuple[str, ...] = ()) -> str:
    """A small HTML table (text columns left-aligned, numbers with 3 decimals)."""
    head = "".join(f'<th class="{"t" if c in text_columns else ""}">{html.escape(str(c))}</th>'
                   for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = row[c]
            text = f"{v:.3f}" if isinstance(v, (float, np.floating)) and c not in text_columns else str(v)
            cells.append(f'<td class="{"t" if c in text_columns else ""}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def gallery_section(run: RunDir, prefix: str, title: str, note: str = "") -> Section | None:
    """A gallery of the PNG figures whose names start with ``prefix``."""
    figures = sorted((run.report_dir / "figures").glob(f"{prefix}*.png"))
    if not figures:
        return None
    items = "".join(f'<figure><img src="figures/{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                    f"<figcaption>{html.escape(p.stem.removeprefix(prefix))}</figcaption></figure>"
                    for p in figures)
    return Section(title, (f'<p class="note">{note}</p>' if note else "") + f'<div class="gallery">{items}</div>')

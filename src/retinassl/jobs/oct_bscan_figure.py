"""The figure a reader judges the real-B-scan boundaries by: a seeded random sample of B-scans with
the graph search's ILM/BM (:mod:`retinassl.oct.graph_search`) and one or more layer models' first
and last boundary drawn on each (:mod:`retinassl.figures.bscan_grid`).

Used by ``retinassl oct adapt-layers`` (held-out B-scans, the synthetic-trained and the adapted
model, into the run's report as ``bscans-*.png``) and by ``benchmarks/oct_real_bscans.py``. Panels
are named by the caller's index (the manifest row), never by a file name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from retinassl.figures.bscan_grid import BScanPanel, boundary_grid_png, mean_disagreement, sample_bscans
from retinassl.methods.oct_layers import LayerModel

GRAPH_SEARCH = "graph search"
FIGURE_PREFIX = "bscans-"


def model_ilm_bm(model: LayerModel, bscans: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The model's first and last boundary (ILM, BM) of each B-scan: ``(2, W)`` rows in its own
    grid (NaN = undefined), B-scans of one size segmented together."""
    out: list[np.ndarray | None] = [None] * len(bscans)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, b in enumerate(bscans):
        by_shape.setdefault(np.asarray(b).shape, []).append(i)
    for idx in by_shape.values():
        rows = model.segment_bscans(np.stack([bscans[i] for i in idx]))[:, [0, -1]]
        for k, i in enumerate(idx):
            out[i] = rows[k].astype(np.float32)
    return out  # type: ignore[return-value]


def comparison_panels(bscans: Sequence[np.ndarray], graph_rows: Sequence[np.ndarray],
                      reasons: Sequence[str], models: Mapping[str, LayerModel], labels: Sequence[str],
                      notes: Sequence[str] | None = None) -> list[BScanPanel]:
    """One panel per B-scan: the graph search (first, the reference) and each model's ILM/BM.

    Args:
        bscans: ``(D, W)`` B-scans; graph_rows: their graph-search ``(2, W)`` ILM/BM rows.
        reasons: the graph search's raised flags per B-scan (``;``-joined, empty = clean).
        models: name -> layer model (its first boundary ILM, its last BM).
        labels: the panels' names (indexes, never file names); notes: a word each, optional.
    """
    predicted = {name: model_ilm_bm(m, bscans) for name, m in models.items()}
    notes = list(notes) if notes is not None else [""] * len(bscans)
    return [BScanPanel(np.asarray(b), labels[i],
                       {GRAPH_SEARCH: np.asarray(graph_rows[i], dtype=np.float32),
                        **{name: rows[i] for name, rows in predicted.items()}},
                       flags=tuple(f for f in str(reasons[i]).split(";") if f), note=notes[i])
            for i, b in enumerate(bscans)]


def panel_summary(panels: Sequence[BScanPanel]) -> list[dict]:
    """Per panel: label, note, flags and each model's disagreement with the graph search (pixels:
    ``<model>_ilm_px``, ``<model>_bm_px``, ``<model>_px``), for a results table."""
    out = []
    for p in panels:
        row: dict = {"label": p.label, "note": p.note, "flags": ";".join(p.flags)}
        for name, rows in p.boundaries.items():
            if name != GRAPH_SEARCH:
                d = mean_disagreement(p.boundaries[GRAPH_SEARCH], rows)
                row.update({f"{name}_ilm_px": d["ilm"], f"{name}_bm_px": d["bm"], f"{name}_px": d["mean"]})
        out.append(row)
    return out


def draw_sample(path: str | Path, bscans: Sequence[np.ndarray], graph_rows: Sequence[np.ndarray],
                reasons: Sequence[str], models: Mapping[str, LayerModel], candidates: Sequence[int],
                n: int, seed: int, notes: Sequence[str] | None = None, title: str = "",
                ids: Sequence[int] | None = None) -> tuple[Path, list[dict]]:
    """Draw ``n`` of the ``candidates`` (indices into ``bscans``) at random (``seed``) and write the
    grid to ``path``; panels are labelled ``row <id>`` (``ids[i]``, default the index ``i``: e.g. the
    manifest row). Returns the path and :func:`panel_summary` (with each panel's ``row``)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    pick = candidates[sample_bscans(len(candidates), n, seed)]
    shown = [int(ids[i]) if ids is not None else int(i) for i in pick]
    panels = comparison_panels([bscans[i] for i in pick], [graph_rows[i] for i in pick],
                               [reasons[i] for i in pick], models, [f"row {r}" for r in shown],
                               None if notes is None else [notes[i] for i in pick])
    boundary_grid_png(panels, path, title=title)
    summary = [{"row": r, **s} for r, s in zip(shown, panel_summary(panels))]
    return Path(path), summary

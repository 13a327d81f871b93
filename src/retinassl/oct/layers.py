"""Layer annotations on B-scans: boundary rows <-> label masks <-> polylines, and gap filling.

Conventions: a boundary is a continuous row coordinate per A-scan (pixel row ``r`` spans
``[r - 0.5, r + 0.5)``), NaN where it is not annotated. ``K`` boundaries ordered top to bottom
split an A-scan into ``K + 1`` regions; the label of pixel ``r`` is the number of boundaries at or
above its centre, ``sum_k [r >= b_k]`` (0 = vitreous above the first boundary, ``K`` = below the
last). A polyline is an ``(M, 2)`` array of ``(x, y)`` = (A-scan, row) points, as drawn in an
annotation tool (DeepRT's annotators used LabelMe polygons).
"""

from __future__ import annotations

import numpy as np

from retinassl.errors import DataError

IGNORE_LABEL = -1


def boundaries_to_labels(boundaries: np.ndarray, depth: int) -> np.ndarray:
    """Region labels from boundary rows.

    Args:
        boundaries: ``(K, W)`` rows (top to bottom), NaN where unannotated.
        depth: rows of the B-scan.

    Returns:
        ``(depth, W)`` int64 labels in ``0..K``; columns where any boundary is NaN are
        :data:`IGNORE_LABEL` (-1).

    Raises:
        DataError: boundaries that cross (a lower boundary above an upper one).
    """
    b = np.asarray(boundaries, dtype=np.float64)
    if b.ndim != 2:
        raise ValueError(f"boundaries must be (K, W), got {b.shape}")
    valid = np.isfinite(b).all(axis=0)
    if valid.any() and (np.diff(b[:, valid], axis=0) < -1e-6).any():
        raise DataError("layer boundaries cross (a lower boundary lies above an upper one)")
    rows = np.arange(depth, dtype=np.float64)[:, None, None]        # (D, 1, 1)
    labels = (rows >= np.where(np.isfinite(b), b, np.inf)[None]).sum(axis=1)  # (D, W)
    labels[:, ~valid] = IGNORE_LABEL
    return labels.astype(np.int64)


def labels_to_boundaries(labels: np.ndarray, num_boundaries: int) -> np.ndarray:
    """Boundary rows from a label mask (the inverse of :func:`boundaries_to_labels`, exact to half
    a pixel).

    Args:
        labels: ``(D, W)`` ints in ``0..K`` (negative = ignore).
        num_boundaries: ``K``.

    Returns:
        ``(K, W)`` float32: boundary ``k`` at ``r - 0.5`` where ``r`` is the first row with a label
        above ``k``; NaN in columns with no such row or with ignored pixels.
    """
    lab = np.asarray(labels)
    d, w = lab.shape
    out = np.full((num_boundaries, w), np.nan, dtype=np.float32)
    ignored = (lab < 0).any(axis=0)
    for k in range(num_boundaries):
        below = lab > k
        has = below.any(axis=0) & ~ignored
        first = np.argmax(below, axis=0)
        out[k, has] = first[has] - 0.5
    return out


def polylines_to_rows(polylines: list[np.ndarray], width: int) -> np.ndarray:
    """One boundary's rows on ``width`` A-scans from one or more polylines (linear interpolation
    inside each polyline's x range, NaN elsewhere; where polylines overlap, the later wins)."""
    rows = np.full(width, np.nan, dtype=np.float32)
    cols = np.arange(width, dtype=np.float64)
    for line in polylines:
        pts = np.asarray(line, dtype=np.float64).reshape(-1, 2)
        pts = pts[np.isfinite(pts).all(axis=1)]
        if len(pts) == 0:
            continue
        order = np.argsort(pts[:, 0], kind="stable")
        x, y = pts[order, 0], pts[order, 1]
        inside = (cols >= x[0]) & (cols <= x[-1])
        rows[inside] = np.interp(cols[inside], x, y)
    return rows


def rows_to_polylines(rows: np.ndarray, step: int = 1) -> list[np.ndarray]:
    """Polylines ``(M, 2)`` of ``(x, y)`` over each run of annotated A-scans (every ``step``-th
    A-scan and the run's last one), the inverse of :func:`polylines_to_rows`."""
    r = np.asarray(rows, dtype=np.float64)
    finite = np.isfinite(r)
    lines = []
    c = 0
    while c < len(r):
        if not finite[c]:
            c += 1
            continue
        end = c
        while end + 1 < len(r) and finite[end + 1]:
            end += 1
        xs = np.arange(c, end + 1, max(1, step))
        if xs[-1] != end:
            xs = np.append(xs, end)
        lines.append(np.stack([xs.astype(np.float64), r[xs]], axis=1))
        c = end + 1
    return lines


def fill_gaps(rows: np.ndarray, max_gap: int) -> np.ndarray:
    """Linear interpolation along the last axis over interior NaN runs of at most ``max_gap``
    A-scans (runs touching an edge, or longer, stay NaN)."""
    dtype = np.float32 if np.asarray(rows).dtype == np.float32 else np.float64
    r = np.array(rows, dtype=np.float64, copy=True)
    flat = r.reshape(-1, r.shape[-1])
    cols = np.arange(flat.shape[1])
    for line in flat:
        bad = ~np.isfinite(line)
        if not bad.any() or bad.all():
            continue
        good = cols[~bad]
        filled = np.interp(cols, good, line[~bad])
        # length of the NaN run each column belongs to, and whether it is interior
        edges = np.flatnonzero(np.diff(np.concatenate([[0], bad.astype(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            if start > 0 and stop < len(line) and stop - start <= max_gap:
                line[start:stop] = filled[start:stop]
    return flat.reshape(r.shape).astype(dtype)


def missing_boundaries(layers: dict[str, np.ndarray], required: tuple[str, ...]) -> list[str]:
    """The names in ``required`` that ``layers`` lacks or that are NaN everywhere."""
    return [n for n in required if n not in layers or not np.isfinite(layers[n]).any()]

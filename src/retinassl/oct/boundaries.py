"""Layer boundaries from per-pixel region probabilities: continuous across A-scans, robust to holes.

For boundary ``k`` of ``K`` (regions ``0..K`` top to bottom, as in :mod:`.layers`) let
``F(r) = P(region > k at row r)``, the probability that row ``r`` lies below the boundary. Cutting
an A-scan between rows ``t - 1`` and ``t`` agrees with the probabilities by
``G(t) = sum_{r < t} (1 - F(r)) + sum_{r >= t} F(r)``, i.e. up to a constant the cumulative sum of
``1 - 2 F``. The cut per A-scan is chosen by dynamic programming (Viterbi) to maximise
``sum_c G_c(t_c) - smoothness * sum_c |t_c - t_{c-1}|`` with ``|t_c - t_{c-1}| <= max_jump``, so the
boundary is one connected path across the B-scan and cannot jump to a spurious edge in one
column; boundaries are extracted top to bottom and each is kept at or below the previous one.

The integer cut is refined to a sub-pixel row from the probabilities in a window around it:
``b = lo - 0.5 + sum_{r=lo}^{hi-1} (1 - F(r))`` (exact for a sharp step at ``t``: ``b = t - 0.5``).

A column is a hole when the window is not confidently above-then-below (mean ``1 - F`` above the cut
or mean ``F`` below it under ``min_confidence``): shadows under vessels, cysts, signal loss. Holes
are set to NaN and interior gaps of at most ``max_gap`` A-scans are interpolated linearly
(:func:`~retinassl.oct.layers.fill_gaps`); longer gaps stay NaN, i.e. undefined thickness.
"""

from __future__ import annotations

import numpy as np

from retinassl.oct.layers import fill_gaps


def _viterbi(gain: np.ndarray, smoothness: float, max_jump: int) -> np.ndarray:
    """Best cut per column. ``gain``: ``(N, W, T)`` (N independent B-scans); returns ``(N, W)``."""
    n, w, t = gain.shape
    score = gain[:, 0].copy()
    back = np.zeros((n, w, t), dtype=np.int16)
    shifts = range(-max_jump, max_jump + 1)
    for c in range(1, w):
        best = np.full((n, t), -np.inf)
        arg = np.zeros((n, t), dtype=np.int16)
        for s in shifts:             # previous cut = current cut - s
            prev = np.full((n, t), -np.inf)
            if s >= 0:
                prev[:, s:] = score[:, :t - s] if s else score
            else:
                prev[:, :s] = score[:, -s:]
            cand = prev - smoothness * abs(s)
            better = cand > best
            best = np.where(better, cand, best)
            arg = np.where(better, np.int16(s), arg)
        score = best + gain[:, c]
        back[:, c] = arg
    path = np.zeros((n, w), dtype=np.int64)
    path[:, -1] = np.argmax(score, axis=1)
    idx = np.arange(n)
    for c in range(w - 1, 0, -1):
        path[:, c - 1] = path[:, c] - back[idx, c, path[:, c]]
    return path


def extract_boundaries(probs: np.ndarray, *, smoothness: float = 0.3, max_jump: int | None = None,
                       window: int = 3, min_confidence: float = 0.55,
                       max_gap: int | None = None) -> np.ndarray:
    """Boundary rows from region probabilities.

    Args:
        probs: ``(N, K + 1, D, W)`` softmax probabilities of the regions of ``N`` B-scans (or
            ``(K + 1, D, W)`` for one).
        smoothness: penalty per row of change between neighbouring A-scans (in units of the
            per-row agreement ``G``).
        max_jump: largest change in rows between neighbouring A-scans (default ``max(2, D // 32)``).
        window: rows each side of the cut used for refinement and confidence.
        min_confidence: columns less confident than this are holes.
        max_gap: longest interior run of holes that is interpolated (default ``W // 4``).

    Returns:
        ``(N, K, W)`` float32 rows in the probabilities' pixel grid (NaN = undefined), ordered top
        to bottom (``(K, W)`` for a single B-scan input).
    """
    p = np.asarray(probs, dtype=np.float32)
    single = p.ndim == 3
    if single:
        p = p[None]
    n, regions, d, w = p.shape
    k_total = regions - 1
    max_jump = max(2, d // 32) if max_jump is None else max_jump
    max_gap = max(1, w // 4) if max_gap is None else max_gap
    below = np.flip(np.cumsum(np.flip(p, axis=1), axis=1), axis=1)   # below[:, j] = P(region >= j)
    out = np.full((n, k_total, w), np.nan, dtype=np.float32)
    floor = np.zeros((n, w), dtype=np.int64)          # cuts of the previous boundary
    rows = np.arange(d + 1)
    for k in range(k_total):
        f = np.transpose(below[:, k + 1], (0, 2, 1))  # (N, W, D): P(row below boundary k)
        gain = np.concatenate([np.zeros((n, w, 1), np.float32),
                               np.cumsum(1.0 - 2.0 * f, axis=2)], axis=2)   # (N, W, D + 1)
        gain = np.where(rows[None, None] >= floor[..., None], gain, -1e9)
        cut = _viterbi(gain, smoothness, max_jump)                          # (N, W) in 0..D
        floor = cut
        lo = np.clip(cut - window, 0, d)
        hi = np.clip(cut + window, 0, d)
        csum = np.concatenate([np.zeros((n, w, 1), np.float32), np.cumsum(1.0 - f, axis=2)], axis=2)
        take = lambda idx: np.take_along_axis(csum, idx[..., None], axis=2)[..., 0]  # noqa: E731
        refined = lo - 0.5 + (take(hi) - take(lo))
        above_mean = (take(cut) - take(lo)) / np.maximum(cut - lo, 1)
        fsum = np.concatenate([np.zeros((n, w, 1), np.float32), np.cumsum(f, axis=2)], axis=2)
        below_mean = (np.take_along_axis(fsum, hi[..., None], 2)[..., 0]
                      - np.take_along_axis(fsum, cut[..., None], 2)[..., 0]) / np.maximum(hi - cut, 1)
        confident = (np.minimum(np.where(cut > lo, above_mean, 1.0), np.where(hi > cut, below_mean, 1.0))
                     >= min_confidence) & (cut > 0) & (cut < d)
        out[:, k] = np.where(confident, refined, np.nan)
    out = fill_gaps(out, max_gap).astype(np.float32)
    # keep the order after refinement and interpolation
    for k in range(1, k_total):
        out[:, k] = np.where(np.isfinite(out[:, k]) & np.isfinite(out[:, k - 1]),
                             np.maximum(out[:, k], out[:, k - 1]), out[:, k])
    return out[0] if single else out


def rescale_rows(rows: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Boundary rows ``(..., W_src)`` in a ``src = (D, W)`` grid -> rows ``(..., W_dst)`` in the
    ``dst`` grid (pixel-centre conventions; columns interpolated linearly, an output column is NaN
    when a model column it depends on is NaN)."""
    (d0, w0), (d1, w1) = src, dst
    r = (np.asarray(rows, dtype=np.float64) + 0.5) * (d1 / d0) - 0.5
    if w0 == w1:
        return r.astype(np.float32)
    x = (np.arange(w1) + 0.5) * (w0 / w1) - 0.5        # destination columns in source units
    x = np.clip(x, 0, w0 - 1)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, w0 - 1)
    t = x - i0
    out = r[..., i0] * (1 - t) + r[..., i1] * t         # NaN propagates from either neighbour
    return out.astype(np.float32)

"""The comparison table's per-seed DeLong counts (metrics/compare.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def test_seed_significance_counts_keep_their_direction() -> None:
    """Per-seed DeLong tests are two-sided: a seed where the tested init is significantly worse
    must not be counted as support for it (``sig_better`` / ``sig_worse``)."""
    from retinassl.metrics.compare import _delong, _cell
    from retinassl.metrics.tasks import TaskSpec

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    ids = [f"i{k}" for k in range(200)]
    perfect = labels + rng.normal(0, 0.3, 200)            # AUC ~0.99
    middling = labels + rng.normal(0, 1.0, 200)           # AUC ~0.76
    noise = rng.normal(0, 1.0, 200)                       # AUC ~0.5
    reference = {0: (ids, labels, middling), 1: (ids, labels, middling), 2: (ids, labels, middling)}
    tested = {0: (ids, labels, perfect), 1: (ids, labels, noise), 2: (ids, labels, middling + 1e-3 * noise)}
    out = _delong(TaskSpec(name="t"), tested, reference, is_reference=False)
    assert (out["sig_seeds"], out["sig_better"], out["sig_worse"]) == (2, 1, 1)
    row = pd.Series({"mean": 0.75, "lo": float("nan"), "hi": float("nan"), "n_seeds": 3, **out})
    assert _cell(row).endswith("(+1/-1 of 3)")

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


def _comparison_rows(init: str, means: dict[float, float], reference: str = "scratch") -> list[dict]:
    return [{"task": "referable", "protocol": "probe", "fraction": f, "init": init, "reference": reference,
             "metric": "auc", "n_seeds": 5, "mean": m, "lo": m - 0.1, "hi": m + 0.1, "interval": "x",
             "reference_mean": means_ref, "delta": m - means_ref, "auc_ensemble": m, "p": 0.5, "p_seeds": 0.5,
             "sig_seeds": 0, "sig_better": 0, "sig_worse": 0}
            for (f, m), means_ref in zip(means.items(), (0.6, 0.7))]


def test_merged_comparisons_put_every_init_beside_one_shared_reference() -> None:
    """Two studies that each added an init beside the same Scratch give one table with both inits,
    Scratch once, and each init's own numbers and tests unchanged."""
    from retinassl.metrics.compare import markdown_tables, merge_comparisons

    scratch = {0.05: 0.6, 1.0: 0.7}
    a = pd.DataFrame(_comparison_rows("scratch", scratch) + _comparison_rows("fundus", {0.05: 0.65, 1.0: 0.72}))
    b = pd.DataFrame(_comparison_rows("scratch", scratch) + _comparison_rows("lesions", {0.05: 0.81, 1.0: 0.85}))
    merged = merge_comparisons({"a": a, "b": b})
    assert sorted(merged["init"]) == ["fundus", "fundus", "lesions", "lesions", "scratch", "scratch"]
    lesions = merged[merged["init"] == "lesions"].set_index("fraction")["mean"].to_dict()
    assert lesions == {0.05: 0.81, 1.0: 0.85}
    text = markdown_tables(merged, ["scratch", "fundus", "lesions"])
    assert [line.split(" |")[0] for line in text.splitlines() if line.startswith("| ") and "init" not in line] == [
        "| scratch", "| fundus", "| lesions"]


def test_merging_runs_whose_reference_differs_is_refused_naming_the_cell() -> None:
    """A Scratch that is not the same model in two runs (another resolution, other seeds) makes
    their deltas and DeLong tests incomparable: refused, naming both runs and the cell."""
    import pytest

    from retinassl.errors import DataError
    from retinassl.metrics.compare import merge_comparisons

    a = pd.DataFrame(_comparison_rows("scratch", {0.05: 0.6, 1.0: 0.7}) + _comparison_rows("fundus", {0.05: 0.65, 1.0: 0.72}))
    b = pd.DataFrame(_comparison_rows("scratch", {0.05: 0.6, 1.0: 0.73}) + _comparison_rows("lesions", {0.05: 0.8, 1.0: 0.8}))
    with pytest.raises(DataError, match=r"the reference differs between a224 and b384 at referable probe fraction 1 auc"):
        merge_comparisons({"a224": a, "b384": b})
    other = pd.DataFrame(_comparison_rows("fundus", {0.05: 0.65, 1.0: 0.72}, reference="imagenet"))
    with pytest.raises(DataError, match="one reference"):
        merge_comparisons({"a": a, "c": other})

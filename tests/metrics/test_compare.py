"""The comparison table's per-seed DeLong counts (metrics/compare.py)."""

from __future__ import annotations

import numpy as np
import pytest
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


def _comparison_rows(init: str, means: dict[float, float], reference: dict[float, float] | None = None,
                     reference_name: str = "scratch") -> list[dict]:
    """Comparison rows of ``init`` (mean per fraction), tested against ``reference`` (its mean per
    fraction; the reference's own rows when ``init`` is it)."""
    reference = means if reference is None else reference
    return [{"task": "referable", "protocol": "probe", "fraction": f, "init": init, "reference": reference_name,
             "metric": "auc", "n_seeds": 5, "mean": m, "lo": m - 0.1, "hi": m + 0.1, "interval": "x",
             "reference_mean": reference[f], "delta": m - reference[f], "auc_ensemble": m, "p": 0.5, "p_seeds": 0.5,
             "sig_seeds": 0, "sig_better": 0, "sig_worse": 0}
            for f, m in means.items()]


SCRATCH = {0.05: 0.6, 1.0: 0.7}


def _run(init: str, means: dict[float, float], scratch: dict[float, float] = SCRATCH) -> pd.DataFrame:
    return pd.DataFrame(_comparison_rows("scratch", scratch) + _comparison_rows(init, means, scratch))


def test_merged_comparisons_put_every_init_beside_one_shared_reference() -> None:
    """Two studies that each added an init beside the same Scratch give one table with both inits,
    Scratch once, and each init's own numbers and tests unchanged."""
    from retinassl.metrics.compare import markdown_tables, merge_comparisons

    merged = merge_comparisons({"a": _run("fundus", {0.05: 0.65, 1.0: 0.72}),
                                "b": _run("lesions", {0.05: 0.81, 1.0: 0.85})})
    assert sorted(merged["init"]) == ["fundus", "fundus", "lesions", "lesions", "scratch", "scratch"]
    lesions = merged[merged["init"] == "lesions"].set_index("fraction")["mean"].to_dict()
    assert lesions == {0.05: 0.81, 1.0: 0.85}
    text = markdown_tables(merged, ["scratch", "fundus", "lesions"])
    assert [line.split(" |")[0] for line in text.splitlines() if line.startswith("| ") and "init" not in line] == [
        "| scratch", "| fundus", "| lesions"]
    # a fraction written with float noise in one run is the same cell, not a second column
    noisy = _run("lesions", {0.05000000000000001: 0.81, 1.0: 0.85}, {0.05000000000000001: 0.6, 1.0: 0.7})
    assert len(merge_comparisons({"a": _run("fundus", {0.05: 0.65, 1.0: 0.72}), "b": noisy})) == 6


@pytest.mark.parametrize("b, message", [
    (_run("lesions", {0.05: 0.8, 1.0: 0.8}, {0.05: 0.6, 1.0: 0.73}),                 # another Scratch
     r"the reference scratch differs between a224 and b384 at referable probe fraction 1 auc"),
    (_run("lesions", {0.1: 0.8, 0.5: 0.8}, {0.1: 0.6, 0.5: 0.73}),                   # no Scratch cell in common
     r"b384 shares no cell of scratch with a224"),
    (_run("fundus", {0.05: 0.66, 1.0: 0.72}),                                        # same name, other pretraining
     r"init fundus has the same name in a224 and b384 but other results at referable probe fraction 0.05"),
    (pd.DataFrame(_comparison_rows("lesions", {0.05: 0.8, 1.0: 0.8}, {0.05: 0.6, 1.0: 0.9})),  # tested against another
     r"init lesions \(b384\) was tested against a scratch of mean 0.900000 .* fraction 1 auc"),
])
def test_merging_runs_whose_reference_differs_is_refused_naming_the_cell(b: pd.DataFrame, message: str) -> None:
    """A Scratch that is not the same model in two runs (another resolution, other seeds) makes
    their deltas and DeLong tests incomparable: refused, naming both runs and the cell; so is a
    merge that cannot show it is the same model, or two different inits under one name."""
    from retinassl.errors import DataError
    from retinassl.metrics.compare import merge_comparisons

    with pytest.raises(DataError, match=message):
        merge_comparisons({"a224": _run("fundus", {0.05: 0.65, 1.0: 0.72}), "b384": b})


def test_merging_runs_with_another_reference_initialisation_is_refused() -> None:
    from retinassl.errors import DataError
    from retinassl.metrics.compare import merge_comparisons

    other = pd.DataFrame(_comparison_rows("imagenet", {0.05: 0.65, 1.0: 0.72}, reference_name="imagenet"))
    with pytest.raises(DataError, match="one reference"):
        merge_comparisons({"a": _run("fundus", {0.05: 0.65, 1.0: 0.72}), "c": other})


def test_a_row_where_the_reference_has_no_cell_is_kept_only_without_a_reference_mean() -> None:
    """A fraction the reference was not run at: comparison() writes reference_mean NaN, which the
    merge keeps; a row that claims a reference mean there is refused."""
    from retinassl.errors import DataError
    from retinassl.metrics.compare import merge_comparisons

    lone = _comparison_rows("lesions", {0.25: 0.82}, {0.25: float("nan")})
    merged = merge_comparisons({"a": _run("fundus", {0.05: 0.65, 1.0: 0.72}), "b": pd.DataFrame(lone)})
    assert 0.25 in set(merged["fraction"])
    claimed = _comparison_rows("lesions", {0.25: 0.82}, {0.25: 0.7})
    with pytest.raises(DataError, match="the merged scratch there is absent"):
        merge_comparisons({"a": _run("fundus", {0.05: 0.65, 1.0: 0.72}), "b": pd.DataFrame(claimed)})

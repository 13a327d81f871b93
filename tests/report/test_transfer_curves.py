"""The transfer report's label-fraction curves (report/transfer.py): intervals drawn even when they
exclude the mean."""

from __future__ import annotations

import pandas as pd


def test_curves_figure_draws_intervals_that_exclude_the_mean(tmp_path) -> None:
    from retinassl.report.transfer import curves_figure
    rows = []
    for init, shift in (("scratch", 0.0), ("other", 0.05)):
        for fraction, mean in ((0.1, 0.6), (1.0, 0.7)):
            # a percentile bootstrap interval can lie entirely above (or below) the point estimate
            rows.append({"task": "referable", "metric": "auc", "protocol": "probe", "init": init,
                         "fraction": fraction, "mean": mean + shift, "lo": mean + shift + 0.01,
                         "hi": mean + shift + 0.05})
    path = curves_figure(pd.DataFrame(rows), "referable", "auc", tmp_path / "curves.png",
                         ["scratch", "other"])
    assert path.is_file() and path.stat().st_size > 0

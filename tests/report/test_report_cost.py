"""The report's cost table: every recorded timing summed per step (protocol, learner, init), the tuning
runs per init, the run's own clock; hand-made run directories with known seconds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.report.cost import WALL_CLOCK, cost_rows, cost_section


def _row(metric: str, value: float, **fields) -> dict:
    return result_row(experiment="study", task=fields.pop("task", "referable"), metric=metric, value=value, **fields)


def test_cost_rows_sum_each_steps_recorded_seconds(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "study")
    append_results(run.results_file, [
        _row("pretrain_seconds", 1800.0, task="pretrain", method="segmentation", init="lesions", protocol="pretrain"),
        _row("pretrain_batches", 400.0, task="pretrain", method="segmentation", init="lesions", protocol="pretrain"),
        _row("extract_seconds", 36.0, method="logreg", init="lesions", protocol="probe"),
        *[_row("seconds", 3.6, method="logreg", init="lesions", protocol="probe", seed=s) for s in range(5)],
        *[_row("seconds", 720.0, method="supervised", init=i, protocol="finetune", seed=s)
          for i in ("scratch", "lesions") for s in range(3)],
        _row("auc", 0.9, method="supervised", init="lesions", protocol="finetune", seed=0),
    ])
    (run.path / "data").mkdir()
    pd.DataFrame({"init": ["lesions"] * 4, "seconds": [90.0, 90.0, 90.0, 90.0]}).to_csv(
        run.path / "data" / "tuning.csv", index=False)
    run.update_status(elapsed_seconds=9000.0)
    table = cost_rows(run).set_index("step")
    assert table.loc["pretraining segmentation, lesions", "minutes"] == pytest.approx(30.0)
    assert table.loc["linear probe: feature extraction (lesions)", "minutes"] == pytest.approx(0.6)
    assert table.loc["linear probe: cells (lesions)", "runs"] == 5
    assert table.loc["linear probe: cells (lesions)", "minutes"] == pytest.approx(0.3)
    assert table.loc["fine-tuning: cells (scratch)", "minutes"] == pytest.approx(36.0)
    assert table.loc["fine-tuning: cells (lesions)", "minutes"] == pytest.approx(36.0)
    assert table.loc["fine-tuning settings tuned on validation (lesions)", "minutes"] == pytest.approx(6.0)
    assert table.index[-1] == WALL_CLOCK and table.iloc[-1]["minutes"] == pytest.approx(150.0)
    assert len(table) == 7  # no row for the AUC or the batch count
    html = cost_section(run).html
    assert "150" in html and "own clock" in html


def test_learners_of_one_protocol_keep_their_own_rows(tmp_path: Path) -> None:
    """An SSL-GAN sweep's baselines share the protocol and the init: each learner is its own step; a run
    without a recorded wall clock has no such row and says nothing of it."""
    run = RunDir.create(tmp_path, "gan")
    rows = []
    for method, protocol, seconds in (("ssl-gan", "semi-supervised", 600.0), ("convnet", "supervised", 120.0),
                                      ("resnet34", "supervised", 240.0)):
        rows += [_row("train_seconds", seconds, task="patch:abnormal", method=method, init="scratch",
                      protocol=protocol, n_labelled=n, seed=s) for n in (10, 20) for s in range(2)]
    append_results(run.results_file, rows)
    table = cost_rows(run).set_index("step")
    assert table.loc["semi-supervised: training (ssl-gan, scratch)", "minutes"] == pytest.approx(40.0)
    assert table.loc["supervised: training (convnet, scratch)", "minutes"] == pytest.approx(8.0)
    assert table.loc["supervised: training (resnet34, scratch)", "runs"] == 4
    assert WALL_CLOCK not in table.index and "own clock" not in cost_section(run).html


def test_a_run_without_timings_has_no_cost_section(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "empty")
    assert cost_section(run) is None
    append_results(run.results_file, [_row("auc", 0.8, method="supervised", protocol="finetune")])
    run.update_status(elapsed_seconds=60.0)
    assert cost_section(run) is None

"""The report's cost table: every recorded timing summed per step, the tuning runs per init, the run's
own clock; hand-made run directories with known seconds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.report.cost import cost_rows, cost_section


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
        _row("train_seconds", 360.0, task="patch:abnormal", method="ssl-gan", n_labelled=10, seed=0),
    ])
    (run.path / "data").mkdir()
    pd.DataFrame({"init": ["lesions"] * 4, "seconds": [90.0, 90.0, 90.0, 90.0]}).to_csv(
        run.path / "data" / "tuning.csv", index=False)
    run.update_status(elapsed_seconds=9000.0)
    table = cost_rows(run).set_index("step")
    assert table.loc["pretraining lesions", "hours"] == pytest.approx(0.5)
    assert table.loc["linear probe: feature extraction (lesions)", "hours"] == pytest.approx(0.01)
    assert table.loc["linear probe: cells (lesions)", "runs"] == 5
    assert table.loc["linear probe: cells (lesions)", "hours"] == pytest.approx(0.005)
    assert table.loc["fine-tuning: cells (scratch)", "hours"] == pytest.approx(0.6)
    assert table.loc["fine-tuning: cells (lesions)", "hours"] == pytest.approx(0.6)
    assert table.loc["ssl-gan: training", "hours"] == pytest.approx(0.1)
    assert table.loc["fine-tuning settings tuned on validation (lesions)", "hours"] == pytest.approx(0.1)
    assert table.iloc[-1]["hours"] == pytest.approx(2.5) and "wall clock" in table.index[-1]
    assert len(table) == 8  # no row for the AUC or the batch count
    assert "2.50" in cost_section(run).html


def test_a_run_without_timings_has_no_cost_section(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "empty")
    assert cost_section(run) is None
    append_results(run.results_file, [_row("auc", 0.8, method="supervised", protocol="finetune")])
    run.update_status(elapsed_seconds=60.0)
    assert cost_section(run) is None

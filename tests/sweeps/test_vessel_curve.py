"""The vessel label-fraction curve (sweeps/vessel_curve.py): one row set per labelled-image count,
and a rerun that retrains nothing already finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinassl.config import load_config
from retinassl.io.rundir import RunDir


@pytest.mark.slow
def test_label_fraction_curve_rows_and_rerun_skips_finished_cells(tmp_path: Path) -> None:
    from retinassl.jobs.segment_config import SegmentConfig
    from retinassl.sweeps.vessel_curve import run_label_fraction_curve
    from retinassl.io.results import RESULT_COLUMNS

    cfg = load_config(SegmentConfig, None, [
        "data.source=synthetic", f"data.options={{n_images: 10, size: 48, seed: 3, out_dir: {tmp_path / 'syn'}}}",
        f"data.cache_dir={tmp_path / 'cache'}", "preprocess.size=48", "model.kwargs={channels: [4, 8]}",
        "method={name: segmentation, patch_size: 16, patches_per_image: 2}", "engine.max_epochs=1",
        "engine.batch_size=2", "train.samples_per_epoch=2", "inference.roi_size=48", "bootstrap=10"])
    run = RunDir.create(tmp_path / "runs", "curve")
    table = run_label_fraction_curve(cfg, run, {"scratch": "scratch"}, [1, 2], [0])
    assert tuple(table.columns) == RESULT_COLUMNS
    dice = table[(table["metric"] == "dice") & (table["method"] == "segmentation")]
    assert sorted(dice["n_labelled"].astype(int)) == [1, 2]
    assert set(dice["task"]) == {"vessels:synthetic"} and set(dice["init"]) == {"scratch"}
    assert sorted(dice["fraction"]) == pytest.approx(sorted([1 / 6, 2 / 6]))  # 6 synthetic train images
    again = run_label_fraction_curve(cfg, run, {"scratch": "scratch"}, [1, 2], [0])
    assert len(again) == len(table)  # nothing retrained

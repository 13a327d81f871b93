"""The pretraining-cost table of the real-data studies (``benchmarks/_common.pretraining_costs``): an
initialisation pretrained with several seeds (``pretrain_seeds``) costs the sum of its runs, and shows the
kept seed's own metrics; a single-seed init is read as before."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parents[2]


def _common():
    spec = importlib.util.spec_from_file_location("_common_costs_under_test", PROJECT / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_common_costs_under_test", module)
    spec.loader.exec_module(module)
    return module


def _row(init: str, seed: int, metric: str, value: float, method: str = "segmentation") -> dict:
    return {"init": init, "seed": seed, "metric": metric, "value": value, "method": method, "protocol": "pretrain"}


def test_several_seeds_cost_their_sum_and_show_the_kept_seed(tmp_path: Path) -> None:
    common = _common()
    rows = [_row("lesions", s, m, v) for s, secs, loss in ((0, 600.0, 0.5), (1, 700.0, 0.4), (2, 800.0, 0.6))
            for m, v in (("pretrain_seconds", secs), ("pretrain_batches", 600.0), ("final_seg_loss", loss))]
    rows += [_row("lesions", s, "selected", float(s == 1)) for s in (0, 1, 2)]
    rows += [_row("lesions", 0, "selection_seconds", 12.0, "selection")]
    # a single-seed init whose pretraining rows were recorded twice (an older run resumed): read once
    rows += [_row("simclr", 0, m, v, "simclr") for m, v in (("pretrain_seconds", 300.0), ("pretrain_batches", 400.0),
                                                          ("pretrain_seconds", 300.0), ("pretrain_batches", 400.0))]
    rows.append({"init": "x", "seed": 0, "metric": "auc", "value": 0.9, "method": "logistic", "protocol": "probe"})
    config = SimpleNamespace(pretrain_engine=SimpleNamespace(batch_size=32),
                             inits=[SimpleNamespace(name="lesions", pretrain={"engine": {"batch_size": 16}}),
                                    SimpleNamespace(name="simclr", pretrain={})])
    costs = common.pretraining_costs(SimpleNamespace(path=tmp_path), config, pd.DataFrame(rows))
    lesions, simclr = costs["lesions"], costs["simclr"]
    assert set(costs) == {"lesions", "simclr"}
    assert lesions["pretrainings"] == 3 and lesions["pretrain_seconds"] == 2100.0
    assert lesions["two_core_minutes"] == pytest.approx(35.0)
    assert lesions["images_seen"] == 3 * 600 * 16 and lesions["images_per_s"] == pytest.approx(28800 / 2100)
    assert lesions["final_seg_loss"] == 0.4 and "selected" not in lesions  # the kept seed's own metrics
    assert lesions["method"] == "segmentation" and math.isnan(lesions["images_used"])
    assert simclr["pretrainings"] == 1 and simclr["pretrain_seconds"] == 300.0 and simclr["images_seen"] == 400 * 32
    assert common.pretrained_label("lesions", lesions) == "lesions (3 seeds)"
    assert common.pretrained_label("simclr", simclr) == "simclr"

"""The comparison tables' 95 % interval (two-level bootstrap over seeds and test images,
:mod:`retinassl.metrics.intervals`): its coverage in the known-truth simulation of
``tests/metrics/test_intervals.py`` over several regimes (seeds, seed-to-seed spread, test-set size), and
the time to build a transfer sweep's comparison table (105 probe cells as in idrid-transfer-real's
per-init share: 3 tasks x 7 fractions x 5 seeds on 103 test images, and 4 inits = 420 cells).

Light (about a minute on one core); writes ``benchmarks/results/interval_coverage.{json,md}``::

    nice -n 15 .venv/bin/python benchmarks/interval_coverage.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
from _common import write_results  # noqa: E402
from test_intervals import auc_of_quality, coverage, write_fake_sweep  # noqa: E402

from retinassl.metrics.compare import comparison  # noqa: E402
from retinassl.metrics.tasks import TaskSpec  # noqa: E402

REGIMES = [  # metric, seeds, tau (sd of seed quality), class sizes of the test set
    ("auc", 1, 0.0, [60, 40]), ("auc", 3, 0.0, [60, 40]), ("auc", 5, 0.0, [60, 40]),
    ("auc", 3, 0.3, [60, 40]), ("auc", 5, 0.3, [60, 40]), ("auc", 5, 0.3, [30, 20]),
    ("auc", 3, 0.6, [60, 40]), ("auc", 5, 0.6, [60, 40]),
    ("kappa", 3, 0.3, [50, 30, 20]), ("kappa", 5, 0.3, [50, 30, 20]),
]
STUDIES = 400


def table_seconds(inits: int) -> tuple[float, int, int]:
    """Seconds to build the comparison table of a fake sweep, its cells and rows."""
    tasks = [TaskSpec(name="referable", kind="binary"), TaskSpec(name="any_dr", kind="binary"),
             TaskSpec(name="dr_grade", kind="multiclass", label="dr_grade", positive_from=2, num_classes=5)]
    fractions, seeds = [0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0], [0, 1, 2, 3, 4]
    names = ["scratch", "a", "b", "c"][:inits]
    with tempfile.TemporaryDirectory() as folder:
        write_fake_sweep(Path(folder), tasks, names, fractions, seeds, n_test=103)
        start = time.perf_counter()
        table = comparison(folder, tasks, "scratch")
        return time.perf_counter() - start, len(tasks) * len(fractions) * len(seeds) * inits, len(table)


def main() -> None:
    rows = []
    for metric, seeds, tau, sizes in REGIMES:
        start = time.perf_counter()
        value = coverage(metric, seeds, tau, STUDIES, sizes)
        sd = float(auc_of_quality(1.2 + 0.01) - auc_of_quality(1.2)) / 0.01 * tau
        rows.append({"metric": metric, "seeds": seeds, "tau": tau, "seed_auc_sd": sd, "classes": sizes,
                     "coverage": value, "seconds": time.perf_counter() - start})
        print(rows[-1], flush=True)
    timings = []
    for inits in (1, 4):
        seconds, cells, table_rows = table_seconds(inits)
        timings.append({"inits": inits, "cells": cells, "table_rows": table_rows, "seconds": seconds})
        print(timings[-1], flush=True)
    lines = [f"Coverage of the 95 % interval over {STUDIES} simulated studies each (the population model of "
             "`tests/metrics/test_intervals.py`: seed quality d ~ N(1.2, tau^2), score = d * class + image effect + "
             "seed x image noise; truth = the expected metric of a seed, analytic / quadrature; 1,000 "
             "replicates per interval; Monte Carlo sd of a coverage about 0.011). With one seed the truth "
             "is the expected metric over seeds too, which one seed cannot cover when tau > 0.", "",
             "| metric | seeds | tau | seed-to-seed AUC sd | test classes | coverage |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['seeds']} | {r['tau']} | {r['seed_auc_sd']:.3f} | "
              f"{'/'.join(map(str, r['classes']))} | {r['coverage']:.3f} |" for r in rows]
    lines += ["", "Time to build the comparison table (2,000 replicates per interval, shared machine):", "",
              "| inits | probe cells | table rows | seconds |", "|---|---|---|---|"]
    lines += [f"| {t['inits']} | {t['cells']} | {t['table_rows']} | {t['seconds']:.1f} |" for t in timings]
    write_results("interval_coverage", {"coverage": rows, "table_time": timings}, "\n".join(lines))


if __name__ == "__main__":
    main()

"""One table from several runs of a transfer study that share their Scratch (issue 18: Fundus, the
two-step variant and the lesion pretraining in the same table, as Jang et al. show theirs).

Each study run (``idrid_transfer_real.py``, ``crossmodal_real.py``) tests its initialisations against
its own Scratch. When several runs were made with the same downstream protocol (data, resolution,
seeds, probe and fine-tuning settings), their Scratch is the same model to the last digit and their
rows can sit in one table: :func:`retinassl.metrics.compare.merge_comparisons` checks that (every
shared cell of every initialisation must agree) and refuses otherwise. Each run's
``comparison.csv`` is read as written (run ``--summary-only --resume RUN`` first to recompute it with
the current interval method); the pretraining costs come from each run's results table.

    .venv/bin/python benchmarks/transfer_combined.py RUN [RUN ...] --name idrid_transfer_combined \\
        [--order scratch,fundus_abnormal,simclr,simclr_fundus,mae,lesions]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, pretrained_label, pretraining_costs, write_results  # noqa: E402
from idrid_transfer_real import targets  # noqa: E402

from retinassl.io.results import read_results  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.metrics.compare import markdown_tables, merge_comparisons  # noqa: E402
from retinassl.sweeps.transfer_config import resolve_config  # noqa: E402


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="transfer study run directories (with comparison.csv)")
    parser.add_argument("--name", required=True, help="write benchmarks/results/<name>.{json,md}")
    parser.add_argument("--order", default="", help="comma-separated initialisations, in table order")
    args = parser.parse_args()
    tables, costs, reference = {}, {}, None
    for path in args.runs:
        if not (path / "comparison.csv").is_file():
            raise SystemExit(f"{path}: no comparison.csv (not a transfer run, or not finished)")
        tables[_shown(path)] = pd.read_csv(path / "comparison.csv")
        config = resolve_config(yaml.safe_load((path / "transfer.yaml").read_text()), None)
        reference = config.reference
        for init, cost in pretraining_costs(RunDir(path), config, read_results(path / "results.csv")).items():
            costs.setdefault(init, {**cost, "run": _shown(path)})
    merged = merge_comparisons(tables)
    order = [i for i in args.order.split(",") if i] or list(dict.fromkeys(
        [reference] + [i for t in tables.values() for i in t["init"]]))
    lines = [f"Runs (each tests its initialisations against its own {reference}; checked to be the same model: its "
             "cells agree wherever two runs have them, and every row was tested against the merged one): "
             + ", ".join(f"`{r}`" for r in tables) + ".", ""]
    if costs:
        lines += ["Pretraining cost (wall minutes on each run's machine; here 2 CPU cores):", "",
                  "| init | method | run | images trained on | 2-core min | images/s |",
                  "|---|---|---|---|---|---|"]
        for init in [i for i in order if i in costs] + sorted(set(costs) - set(order)):
            c = costs[init]
            lines.append(f"| {pretrained_label(init, c)} | {c.get('method', '?')} | `{c['run']}` | "
                         f"{c.get('images_used', math.nan):.0f} | "
                         f"{c['two_core_minutes']:.1f} | {c['images_per_s']:.1f} |")
        lines.append("")
    lines += [targets(merged, reference), "", markdown_tables(merged, order)]
    write_results(args.name, {"runs": list(tables), "pretrain": costs, "comparison": merged.to_dict("records")},
                  "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The IDRiD transfer comparison of issue 4 (preset ``idrid-transfer``), and its tables.

Runs ``retinassl sweep idrid-transfer --budget BUDGET`` (Scratch, five pretext tasks, SimCLR and
supervised "Fundus" pretraining on the leakage-free pool; linear probe and fine-tuning at 1-100 % of
the IDRiD part-B training labels; referable DR and DR grade on the official test set) in a run
directory under ``runs/``, then writes ``benchmarks/results/idrid_transfer_<budget>.{json,md}``:
the AUC/kappa tables by initialisation x label fraction with 95 % intervals and DeLong p-values vs
Scratch, what the leakage cleaning removed, and where the time went.

Usage (long: run it under the team's heavy-job lock)::

    nohup flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/idrid_transfer.py \\
        --budget cpu > /tmp/idrid_transfer.log 2>&1 &
    # a killed run continues where it stopped:
    .venv/bin/python benchmarks/idrid_transfer.py --budget cpu --resume runs/idrid-transfer-cpu-<time>
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, run_transfer_timed, with_shared_data_root, write_results  # noqa: E402

from retinassl.config import read_yaml  # noqa: E402
from retinassl.sweeps.transfer_config import resolve_config  # noqa: E402
from retinassl.io.results import read_results  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402


def summary(run: RunDir, seconds: float) -> tuple[dict, str]:
    results = read_results(run.results_file)
    pre = results[results["protocol"] == "pretrain"]
    pretrain = {init: {m: float(v) for m, v in zip(g["metric"], g["value"])}
                for init, g in pre.groupby("init")}
    cells = results[results["protocol"].isin(["probe", "finetune"])]
    timing = cells[cells["metric"] == "seconds"].groupby(["protocol", "init"])["value"].sum()
    extract = results[results["metric"] == "extract_seconds"].groupby("init")["value"].sum()
    extracted = results[results["metric"] == "extracted_images"].groupby("init")["value"].sum()
    n_cells = cells[cells["metric"] == "n_test"].groupby("protocol").size().to_dict()
    removed = pd.read_csv(run.path / "data" / "downstream-removed.csv")
    pool_removed = pd.read_csv(run.path / "data" / "pool-removed.csv") \
        if (run.path / "data" / "pool-removed.csv").is_file() else pd.DataFrame(columns=["id", "reason"])
    pool = pd.read_csv(run.path / "data" / "pool.csv") if (run.path / "data" / "pool.csv").is_file() \
        else pd.DataFrame()
    downstream = pd.read_csv(run.path / "data" / "downstream.csv")
    data = {
        "run": str(run.path.relative_to(ROOT) if run.path.is_relative_to(ROOT) else run.path),
        "wall_seconds": seconds,
        "downstream": {"train": int((downstream["split"] != "test").sum()),
                       "test": int((downstream["split"] == "test").sum()),
                       "removed": removed[["id", "reason", "related"]].to_dict("records")},
        "pool": {"images": len(pool), "removed_by_reason": pool_removed["reason"].value_counts().to_dict(),
                 "by_dataset": pool["dataset"].value_counts().to_dict() if "dataset" in pool else {}},
        "pretrain": pretrain,
        "cells": n_cells,
        "seconds_by_protocol_and_init": {f"{p}/{i}": float(v) for (p, i), v in timing.items()},
        "feature_extraction": {i: {"seconds": float(extract[i]), "images": float(extracted.get(i, 0))}
                               for i in extract.index},
        "comparison": pd.read_csv(run.path / "comparison.csv").to_dict("records"),
    }
    lines = [f"Run directory: `{data['run']}`; wall time {seconds / 3600:.2f} h.", "",
             f"Downstream: IDRiD part B, official split: {data['downstream']['train']} training images "
             f"after cleaning, {data['downstream']['test']} test images. Removed from training: "
             + "; ".join(f"{r['id'].removeprefix('idrid-B-')} ({r['reason']}: "
                         f"{str(r['related']).replace('idrid-B-', '')})" for r in data["downstream"]["removed"])
             + ".", "",
             f"Pretraining pool: {data['pool']['images']} images "
             f"({', '.join(f'{k} {v}' for k, v in data['pool']['by_dataset'].items())}); removed: "
             + ", ".join(f"{v} {k}" for k, v in data["pool"]["removed_by_reason"].items()) + ".", "",
             "| init | pretraining s | pool | linear-probe s (extraction + fits) | fine-tuning s |",
             "|---|---|---|---|---|"]
    for init in dict.fromkeys(cells["init"]):
        p = pretrain.get(init, {})
        probe_s = float(timing.get(("probe", init), 0.0)) + float(extract.get(init, 0.0))
        lines.append(f"| {init} | {p.get('pretrain_seconds', 0):.0f} | {p.get('pool_size', 0):.0f} | "
                     f"{probe_s:.0f} | {float(timing.get(('finetune', init), 0.0)):.0f} |")
    lines += ["", (run.path / "comparison.md").read_text()]
    return data, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=["smoke", "cpu", "full"], default="cpu")
    parser.add_argument("--resume", type=Path, default=None, help="continue this run directory")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    parser.add_argument("--inits", default=None,
                        help="comma-separated initialisations to run (default: all of the budget's); "
                             "e.g. a shorter comparison, or finishing a run one method at a time")
    args = parser.parse_args()
    from retinassl.logs import setup_logging

    setup_logging(logging.INFO)
    data = with_shared_data_root(read_yaml("idrid-transfer"))
    if args.inits:
        wanted = [name.strip() for name in args.inits.split(",") if name.strip()]
        budget = (data.get("budgets") or {}).get(args.budget) or {}
        holder = budget if "inits" in budget else data
        known = [i["name"] for i in holder["inits"]]
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise SystemExit(f"--inits: unknown initialisation(s) {unknown}; the {args.budget} budget has {known}")
        holder["inits"] = [i for i in holder["inits"] if i["name"] in wanted]
    config = resolve_config(data, args.budget)
    run = RunDir.resume(args.resume) if args.resume else RunDir.create(args.runs_dir, f"idrid-transfer-{args.budget}")
    run.attach_log_file()
    logging.getLogger("retinassl").info("run directory: %s", run.path)
    seconds = run_transfer_timed(config, run)
    from retinassl.report.html import build_report

    build_report(run, title=f"idrid-transfer ({args.budget})")
    result, text = summary(run, seconds)
    write_results(f"idrid_transfer_{args.budget}", result, text)
    print(text)


if __name__ == "__main__":
    main()

"""What a run cost: its wall-clock time over every start, and the training and evaluation time each
step recorded (pretraining per initialisation, fine-tuning settings tuned on validation, the cells
of each protocol), so that a reader can plan the same study on their own machine."""

from __future__ import annotations

import html
import math

import pandas as pd

from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.report.sections import Section, table_html

PROTOCOLS = {"probe": "linear probe", "finetune": "fine-tuning", "pretrain": "pretraining"}
KINDS = {"cells": "cells", "extract": "feature extraction", "train": "training"}


def cost_rows(run: RunDir) -> pd.DataFrame:
    """One row per step kind: ``step``, ``runs`` (recorded timings) and ``hours`` (their sum). Time is
    what each step recorded (the ``*_seconds`` / ``seconds`` metrics of the results table, the
    tuning runs of ``data/tuning.csv``), then the run's own wall clock."""
    rows = []
    if run.results_file.is_file():
        results = read_results(run.results_file)
        timed = results[results["metric"].astype(str).str.fullmatch(r"(\w+_)?seconds")
                        & results["value"].astype(float).map(math.isfinite)]
        for (protocol, init, metric), block in timed.groupby(["protocol", "init", "metric"], sort=False, dropna=False):
            protocol, init, metric = (str(v) if isinstance(v, str) else "" for v in (protocol, init, metric))
            kind = metric.removesuffix("seconds").removesuffix("_") or "cells"
            step = PROTOCOLS.get(protocol, protocol or str(block["method"].iloc[0]))
            if protocol == "pretrain":
                step = f"pretraining {init}"
            else:
                step = f"{step}: {KINDS.get(kind, kind.replace('_', ' '))}" + (f" ({init})" if init else "")
            rows.append({"step": step, "runs": len(block), "hours": block["value"].astype(float).sum() / 3600})
    tuning = run.path / "data" / "tuning.csv"
    if tuning.is_file():
        table = pd.read_csv(tuning)
        if {"init", "seconds"} <= set(table.columns):
            for init, block in table.groupby("init", sort=False):
                rows.append({"step": f"fine-tuning settings tuned on validation ({init})", "runs": len(block),
                             "hours": block["seconds"].astype(float).sum() / 3600})
    wall = run.status().get("elapsed_seconds")
    if rows and wall is not None:
        rows.append({"step": "the run's wall clock (every start, everything included)", "runs": "",
                     "hours": float(wall) / 3600})
    return pd.DataFrame(rows, columns=["step", "runs", "hours"])


def cost_section(run: RunDir) -> Section | None:
    """The cost table (None when the run recorded no timing)."""
    table = cost_rows(run)
    if table.empty:
        return None
    note = ("Hours of wall-clock time as each step recorded them, on the machine and threads that ran them "
            "(several steps of one kind are summed; the cells of a fine-tuning initialisation include its "
            "training and scoring). The last row is the run's own clock over all its starts: it also counts "
            "data preparation, feature extraction and figures.")
    return Section("Cost", f'<p class="note">{html.escape(note)}</p>'
                   + table_html(table.assign(hours=table["hours"].map(lambda h: f"{h:.2f}")),
                                text_columns=("step", "hours")))

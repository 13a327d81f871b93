"""What a run cost: the training and evaluation time each step recorded (pretraining per
initialisation, fine-tuning settings tuned on validation, the cells of each protocol and learner),
and the run's own wall clock where its study recorded one, so that a reader can plan the same study
on their own machine."""

from __future__ import annotations

import html
import math

import pandas as pd

from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.report.sections import Section, number, table_html

PROTOCOLS = {"probe": "linear probe", "finetune": "fine-tuning"}
KINDS = {"": "cells", "extract": "feature extraction", "train": "training"}
WALL_CLOCK = "the run's wall clock over every start (its study script's record; everything included)"


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _step(protocol: str, method: str, init: str, metric: str) -> str:
    """How a timed step is named: pretraining by method and init; a transfer protocol's cells by init;
    any other step (a learner of a semi-supervised sweep, a single training) by method and init."""
    kind = metric.removesuffix("seconds").removesuffix("_")
    if kind == "selection":  # pretrain_seeds: the probes that chose among the seeds' encoders
        return f"pretraining seed chosen on validation ({init})"
    if protocol == "pretrain" or kind == "pretrain":
        return "pretraining " + ", ".join(x for x in (method, init) if x)
    what = KINDS.get(kind, kind.replace("_", " "))
    if protocol in PROTOCOLS:
        return f"{PROTOCOLS[protocol]}: {what}" + (f" ({init})" if init else "")
    detail = ", ".join(x for x in (method, init) if x)
    return f"{protocol or 'training'}: {what}" + (f" ({detail})" if detail else "")


def cost_rows(run: RunDir) -> pd.DataFrame:
    """One row per step: ``step``, ``runs`` (timings recorded) and ``minutes`` (their sum): the
    ``seconds`` / ``*_seconds`` metrics of the results table grouped by protocol, method, init and
    metric; the tuning runs of ``data/tuning.csv`` per init; then the run's wall clock
    (``elapsed_seconds`` of ``run.json``, written by the benchmark studies) when there is one."""
    rows = []
    if run.results_file.is_file():
        results = read_results(run.results_file)
        timed = results[results["metric"].astype(str).str.fullmatch(r"(\w+_)?seconds")
                        & results["value"].astype(float).map(math.isfinite)]
        keys = ["protocol", "method", "init", "metric"]
        for key, block in timed.groupby(keys, sort=False, dropna=False):
            rows.append({"step": _step(*(_text(v) for v in key)), "runs": len(block),
                         "minutes": block["value"].astype(float).sum() / 60})
    tuning = run.path / "data" / "tuning.csv"
    if tuning.is_file():
        table = pd.read_csv(tuning)
        if {"init", "seconds"} <= set(table.columns):
            for init, block in table.groupby("init", sort=False):
                rows.append({"step": f"fine-tuning settings tuned on validation ({init})", "runs": len(block),
                             "minutes": block["seconds"].astype(float).sum() / 60})
    wall = run.status().get("elapsed_seconds")
    if rows and wall is not None:
        rows.append({"step": WALL_CLOCK, "runs": "", "minutes": float(wall) / 60})
    return pd.DataFrame(rows, columns=["step", "runs", "minutes"])


def cost_section(run: RunDir) -> Section | None:
    """The cost table (None when the run recorded no timing)."""
    table = cost_rows(run)
    if table.empty:
        return None
    note = ("Minutes of wall-clock time as each step recorded them, on the machine and threads that ran them, "
            "summed over the runs of a step: training for pretraining, fine-tuning and tuning runs, the fit for "
            "probe cells (scoring the test images and preparing data are not in these rows). An encoder "
            "given from elsewhere has no pretraining row here.")
    if table["step"].iloc[-1] == WALL_CLOCK:
        note += " The last row is the run's own clock: it counts everything, data preparation and figures too."
    shown = table.assign(minutes=table["minutes"].map(number))
    return Section("Cost", f'<p class="note">{html.escape(note)}</p>'
                   + table_html(shown, text_columns=("step", "minutes")))

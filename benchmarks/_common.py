"""Shared helpers of the benchmark scripts: where the real data is, and writing results.

Every benchmark measures ratios side by side in one run (the toolkit's path vs a plain baseline on
the same inputs, interleaved), so the numbers mean something on a shared or loaded machine; it writes
``benchmarks/results/<name>.json`` (all numbers, machine info, command) and ``<name>.md`` (a table).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("RETINASSL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "platform": platform.platform(),
            "date": _dt.datetime.now().isoformat(timespec="seconds")}


KEPT = "<!-- written by hand below this line: kept when the benchmark rewrites the file -->"


def kept_notes(path: Path) -> str:
    """The hand-written part of a results file (from the :data:`KEPT` marker on), or ''."""
    text = path.read_text() if path.is_file() else ""
    return text[text.index(KEPT):] if KEPT in text else ""


def write_results(name: str, data: dict, table_md: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (the md's hand-written part below the
    :data:`KEPT` marker, a study's reading of its tables, survives a rerun)."""
    from retinassl.atomic import write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    notes = kept_notes(RESULTS / f"{name}.md")
    data = {"benchmark": name, "command": " ".join([Path(sys.executable).name] + sys.argv),
            "machine": machine(), **data}
    write_text(RESULTS / f"{name}.json", json.dumps(data, indent=2, default=float))
    header = (f"# {name}\n\nCommand: `{data['command']}`  \nMachine: {data['machine']['platform']}, "
              f"torch {data['machine']['torch']}, {data['machine']['threads']} threads, load average "
              f"at start {tuple(round(x, 1) for x in data['machine']['load_average'])}, "
              f"{data['machine']['date']}\n\n")
    write_text(RESULTS / f"{name}.md", header + table_md + "\n" + (f"\n{notes.rstrip()}\n" if notes else ""))


def with_shared_data_root(data: dict) -> dict:
    """Point a preset's data paths (``$RETINASSL_DATA_ROOT/...`` and the older ``../shared/data/...``)
    at SHARED_DATA, so a benchmark runs from any working directory
    (:func:`retinassl.data_roots.resolve_data_roots`; a dataset that is absent is left to the loader)."""
    from retinassl.data_roots import resolve_data_roots

    return resolve_data_roots(data, SHARED_DATA, legacy=True, check=False, origin="benchmark preset")


def run_transfer_timed(config, run) -> float:
    """Run (or complete) a transfer sweep in ``run`` and keep its status: ``failed`` with the error,
    or ``finished``; returns the wall seconds of every part of the run (resumed parts added)."""
    import time

    from retinassl.sweeps.transfer import run_transfer

    before = float(run.status().get("elapsed_seconds", 0.0))
    start = time.perf_counter()
    try:
        run_transfer(config, run)
    except BaseException as exc:
        run.update_status(status="failed", error=str(exc)[:500], elapsed_seconds=before + time.perf_counter() - start)
        raise
    seconds = before + time.perf_counter() - start
    run.update_status(status="finished", elapsed_seconds=seconds)
    return seconds


def pretraining_costs(run, config, results) -> dict:
    """Per pretrained initialisation of a transfer sweep: its recorded metrics, the images its
    pretraining used (its own manifest: an init's splits/label select rows of the pool), the batch,
    images seen, 2-core minutes and images/s (optimizer steps x batch / seconds)."""
    import math

    import pandas as pd

    pre = results[results["protocol"] == "pretrain"]
    out = {}
    for init, g in pre.groupby("init"):
        values = dict(zip(g["metric"], g["value"].astype(float)))
        spec = next((i for i in config.inits if i.name == init), None)
        batch = config.pretrain_engine.batch_size
        if spec is not None:
            batch = int(((spec.pretrain or {}).get("engine") or {}).get("batch_size", batch))
        secs = values.get("pretrain_seconds", math.nan)
        images = values.get("pretrain_batches", math.nan) * batch
        used = run.path / "pretrain" / init / "manifest.csv"
        values["images_used"] = float(len(pd.read_csv(used))) if used.is_file() else math.nan
        out[init] = {**values, "method": str(g["method"].iloc[0]), "batch_size": batch, "images_seen": images,
                     "two_core_minutes": secs / 60,
                     "images_per_s": images / secs if secs else math.nan}
    return out

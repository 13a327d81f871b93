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
    from retinassl.hardware import cpu_supports_bf16

    # bf16: what engine.precision=auto trains in on this CPU (a CPU without it trains other models)
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu_bf16": cpu_supports_bf16(),
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
              f"torch {data['machine']['torch']}, {data['machine']['threads']} threads, "
              f"{'bf16' if data['machine'].get('cpu_bf16') else 'no bf16'} CPU, load average "
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
    write_report(run)
    return seconds


def write_report(run) -> None:
    """The run's HTML report (``report/index.html``: curves, DeLong and tuning tables, t-SNE, Grad-CAM,
    cost), as ``retinassl sweep`` writes it."""
    import logging

    from retinassl.report.html import build_report

    log = logging.getLogger("retinassl")
    try:
        log.info("report: %s", build_report(run))
    except Exception:  # the study's results are kept and its tables still written; `retinassl report RUN` retries
        log.exception("the HTML report of %s could not be written", run.path)


def manifest_ids(path: Path) -> "pd.DataFrame | None":  # noqa: F821
    """A run's manifest (``path``), or the ids and splits an archive kept of it (``X.ids.csv``, see
    :mod:`retinassl.io.archive`), or None."""
    import pandas as pd

    from retinassl.io.archive import IDS_SUFFIX

    for candidate in (path, path.with_name(path.name[:-len(".csv")] + IDS_SUFFIX)):
        if candidate.is_file():
            return pd.read_csv(candidate, keep_default_na=False)
    return None


def pretraining_costs(run, config, results) -> dict:
    """Per pretrained initialisation of a transfer sweep: its recorded metrics, the images its
    pretraining used (its own manifest: an init's splits/label select rows of the pool), the batch,
    images seen, 2-core minutes and images/s (optimizer steps x batch / seconds). An init pretrained
    with several seeds (``pretrain_seeds``): steps and minutes summed over its pretrainings
    (``pretrainings``), the other metrics those of the kept seed."""
    import math

    import pandas as pd

    pre = results[results["protocol"] == "pretrain"]
    out = {}
    for init, g in pre.groupby("init"):
        kept = g[(g["metric"] == "selected") & (g["value"].astype(float) == 1.0)]["seed"]
        own = g[g["seed"].isin(kept)] if len(kept) else g
        values = dict(zip(own["metric"], own["value"].astype(float)))
        values.pop("selected", None)
        for metric in ("pretrain_seconds", "pretrain_batches"):  # each seed's run once (its last record)
            per_seed = g[g["metric"] == metric].groupby("seed")["value"].last().astype(float)
            values[metric] = float(per_seed.sum()) if len(per_seed) else math.nan
        values["pretrainings"] = float(max(1, g[g["metric"] == "pretrain_seconds"]["seed"].nunique()))
        spec = next((i for i in config.inits if i.name == init), None)
        batch = config.pretrain_engine.batch_size
        if spec is not None:
            batch = int(((spec.pretrain or {}).get("engine") or {}).get("batch_size", batch))
        secs = values.get("pretrain_seconds", math.nan)
        images = values.get("pretrain_batches", math.nan) * batch
        used = manifest_ids(run.path / "pretrain" / init / "manifest.csv")
        values["images_used"] = float(len(used)) if used is not None else math.nan
        out[init] = {**values, "method": str(g["method"].iloc[0]), "batch_size": batch, "images_seen": images,
                     "two_core_minutes": secs / 60,
                     "images_per_s": images / secs if secs else math.nan}
    return out


def pretrained_label(init: str, cost: dict) -> str:
    """An init's name in a cost table: with its number of pretraining seeds when it had several (the
    steps and minutes beside it are their sum)."""
    n = cost.get("pretrainings", 1)
    return f"{init} ({n:.0f} seeds)" if n > 1 else init


def run_study(config, args, name: str):
    """Open a study's run directory (``args.resume``, read only with ``args.summary_only``, or a new
    ``<runs_dir>/<name>-<time>``) and run or complete its sweep; with ``--summary-only`` only its
    comparison table and report are recomputed. Returns ``(run, wall seconds)``."""
    import logging

    from retinassl.io.rundir import RunDir

    if args.summary_only and not args.resume:
        raise SystemExit("--summary-only writes the tables of a finished run: give it with --resume")
    if args.summary_only:
        run = RunDir(args.resume)  # read only: reopening for a resume would mark a finished run as running
    else:
        run = RunDir.resume(args.resume) if args.resume else RunDir.create(args.runs_dir, name)
    run.attach_log_file()
    logging.getLogger("retinassl").info("run directory: %s", run.path)
    if not args.summary_only:
        return run, run_transfer_timed(config, run)
    if run.results_file.is_file():  # the comparison again, with the current interval method
        from retinassl.metrics.compare import write_comparison

        write_comparison(run, config)
        write_report(run)
    return run, float(run.status().get("elapsed_seconds", 0.0))


def results_name(args, default: str) -> str:
    """The results file of a study: ``--results-name``, or the preset's own ``default`` when the study
    is the preset's (a study changed by --inits/--init-from/--steps/--set must name its own results, so
    that it never overwrites the preset's committed tables)."""
    if args.results_name:
        return args.results_name
    if args.inits or args.init_from or args.steps or args.set:
        raise SystemExit("--inits/--init-from/--steps/--set change the study: name its results with --results-name")
    return default


def add_study_arguments(parser) -> None:
    """The options of a real-data transfer study (``idrid_transfer_real.py``, ``crossmodal_real.py``):
    which initialisations, their pretraining steps, given encoders, overrides, the results name and a
    summary of a finished run; :func:`study_config` applies them."""
    parser.add_argument("--inits", default=None, help="comma-separated initialisations to run (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a top-level override after the budget, as YAML (e.g. pretrain_engine.max_steps=300)")
    parser.add_argument("--steps", action="append", default=[], metavar="INIT=N",
                        help="pretraining optimizer steps of one initialisation (its pretrain.engine.max_steps; "
                             "its max_epochs raised so that the steps, not the epochs, end it)")
    parser.add_argument("--pretrain-seeds", action="append", default=[], metavar="INIT=S,S,...",
                        help="pretrain INIT once per seed and keep the encoder a probe prefers on held-out training "
                             "patients (its pretrain_seeds)")
    parser.add_argument("--init-from", action="append", default=[], metavar="INIT=DIR",
                        help="use this encoder directory (e.g. an earlier run's pretrain/<init>/encoder) for INIT "
                             "instead of pretraining it; an INIT the preset does not have is added when --inits "
                             "names it too (e.g. an encoder pretrained by the other study)")
    parser.add_argument("--results-name", default=None,
                        help="write benchmarks/results/<name>.{json,md} (default: the preset's name)")
    parser.add_argument("--summary-only", action="store_true",
                        help="write the tables of --resume without running (the comparison table recomputed)")


def study_config(data: dict, budget_name: str, inits: str | None = None, steps=(), init_from=(), sets=(),
                 pretrain_seeds=()):
    """A transfer preset's ``data`` (read, data roots resolved) at its ``budget_name`` budget with a
    study's command-line changes: ``init_from`` (``INIT=DIR``: a given encoder instead of pretraining;
    an INIT the budget lacks is added when ``inits`` names it too), ``inits`` (comma-separated names to keep), ``steps`` (``INIT=N``
    pretraining steps), ``pretrain_seeds`` (``INIT=S,S,...``: its ``pretrain_seeds``) and ``sets`` (``KEY=VALUE``
    overrides after the budget, as YAML)."""
    import yaml

    from retinassl.io.saved_model import is_saved_model
    from retinassl.sweeps.transfer import resolve_config

    budgets = data.setdefault("budgets", {})
    if budgets.get(budget_name) is None:  # `cpu: {}`: the overrides below must land in the data itself
        budgets[budget_name] = {}
    budget = budgets[budget_name]
    holder = budget if "inits" in budget else data
    known = [i["name"] for i in holder["inits"]]
    wanted = [name.strip() for name in (inits or "").split(",") if name.strip()]
    for item in init_from:
        init, _, path = item.partition("=")
        if not init or not is_saved_model(Path(path)):
            raise SystemExit(f"--init-from {item!r}: expected INIT=DIR with a saved encoder in DIR "
                             "(e.g. runs/<study>/pretrain/<init>/encoder)")
        if init not in known and init not in wanted:  # a misspelt name must not add an init
            raise SystemExit(f"--init-from {init!r}: not an initialisation of the {budget_name} budget {known}; "
                             "to add a given encoder as a new one, also name it in --inits")
        if wanted and init not in wanted:
            raise SystemExit(f"--init-from {init!r}: --inits {inits!r} leaves it out")
        spec = next((i for i in holder["inits"] if i["name"] == init), None)
        if spec is None:
            spec = {"name": init}
            holder["inits"].append(spec)
        spec.pop("pretrain", None)
        spec["init"] = str(Path(path).resolve())
    if wanted:
        known = [i["name"] for i in holder["inits"]]
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise SystemExit(f"--inits: unknown initialisation(s) {unknown}; the {budget_name} budget has {known}")
        holder["inits"] = [i for i in holder["inits"] if i["name"] in wanted]
    for item in steps:
        init, _, n = item.partition("=")
        spec = next((i for i in holder["inits"] if i["name"] == init and i.get("pretrain")), None)
        if spec is None:
            raise SystemExit(f"--steps: {init!r} is not a pretrained initialisation of this run")
        engine = spec["pretrain"].setdefault("engine", {})
        engine["max_steps"] = int(n)
        engine["max_epochs"] = max(int(engine.get("max_epochs", 1)), int(n))  # the steps bound it, not the epochs
    for item in pretrain_seeds:
        init, _, seeds = item.partition("=")
        spec = next((i for i in holder["inits"] if i["name"] == init and i.get("pretrain")), None)
        if spec is None:
            raise SystemExit(f"--pretrain-seeds: {init!r} is not a pretrained initialisation of this run")
        try:
            spec["pretrain_seeds"] = [int(x) for x in seeds.split(",")]
        except ValueError:
            raise SystemExit(f"--pretrain-seeds {item!r}: expected INIT=S,S,... with integer seeds") from None
    for item in sets:
        key, _, value = item.partition("=")
        target = budget
        *parents, last = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = yaml.safe_load(value)
    return resolve_config(data, budget_name)

"""``retinassl sweep PRESET``: run a packaged experiment (many trainings and evaluations) into one
run directory with one results table and one report.

A preset's ``kind`` says which runner executes it; each runner is a plain function
``(config_dict, run, budget, resume) -> None`` listed in :func:`runners`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from retinassl.errors import ConfigError
from retinassl.cli.common import (DATA_ROOT, OVERRIDES, RESUME, RUNS_DIR, config_and_overrides,
                                  experiment_record, run_job)

Runner = Callable[[dict[str, Any], Any, str, bool], None]


def runners() -> dict[str, Runner]:
    """Experiment kinds and the function that runs each (imported here, explicitly)."""
    from retinassl.sweeps.transfer import transfer_runner
    from retinassl.sweeps.ssl_gan import run_ssl_gan_experiment

    return {"ssl-gan": run_ssl_gan_experiment, "transfer": transfer_runner}


def check_config(data: dict[str, Any], budget: str, origin: str) -> None:
    """Validate an experiment before its run directory exists (a config error must not leave an
    empty run directory behind): a known ``kind`` and a config its runner accepts."""
    from retinassl.sweeps.ssl_gan import resolve_config as ssl_gan_config
    from retinassl.sweeps.transfer_config import resolve_config as transfer_config

    kind = data.get("kind")
    checks = {"ssl-gan": ssl_gan_config, "transfer": transfer_config}
    if kind not in runners():
        raise ConfigError(f"{origin}: unknown experiment kind {kind!r}; known: {', '.join(sorted(runners()))}")
    if kind in checks:
        from retinassl.cli.common import check_batch_config

        check_batch_config(checks[kind](data, budget))  # batches that cannot fit are refused too


def with_data_roots(data: dict[str, Any], budget: str | None, data_root: Path | None, origin: str,
                    legacy: bool) -> dict[str, Any]:
    """The experiment with its data paths under the data root (:mod:`retinassl.data_roots`): the
    paths the chosen budget uses must resolve (a ConfigError names the key and ``--data-root``);
    those of other budgets may stay placeholders when no root is given."""
    from retinassl.data_roots import resolve_data_roots
    from retinassl.sweeps.grid import merge_budget

    base = {k: v for k, v in data.items() if k != "budgets"}
    resolve_data_roots(merge_budget(base, (data.get("budgets") or {}).get(budget) or {}), data_root,
                       legacy=legacy, origin=origin)
    return resolve_data_roots(data, data_root, legacy=legacy, missing_ok=True, origin=origin)


def sweep(preset: str = typer.Argument(None, help="A packaged experiment preset or a YAML file "
                                        "(not needed with --resume).", show_default=False),
          overrides: list[str] = OVERRIDES,
          budget: str = typer.Option("cpu", "--budget", help="smoke (seconds, for tests), cpu (hours "
                                     "on 2 CPU cores), or full (the paper's setting, for GPUs)."),
          resume: Path = RESUME, runs_dir: Path = RUNS_DIR, data_root: Path = DATA_ROOT) -> None:
    """Run a whole experiment (e.g. idrid-ssl-gan, idrid-transfer) and write its results table,
    comparison tables, figures and HTML report."""
    from retinassl.config import apply_overrides, read_yaml
    from retinassl.io.rundir import RunDir

    if budget not in ("smoke", "cpu", "full"):
        raise ConfigError(f"--budget must be smoke, cpu or full, not {budget!r}")
    preset, overrides = config_and_overrides(preset, overrides)
    if resume is not None:
        from retinassl.cli.common import refuse_finished

        data = with_data_roots(apply_overrides(read_yaml(Path(resume) / "sweep.yaml"), overrides),
                               budget, data_root, str(resume), legacy=False)
        check_config(data, budget, str(resume))
        refuse_finished(resume, overrides)  # before RunDir.resume marks the run running
        run = RunDir.resume(resume)
    else:
        if preset is None:
            raise ConfigError("give a PRESET (e.g. idrid-ssl-gan) or --resume RUN")
        data = with_data_roots(apply_overrides(read_yaml(preset), overrides), budget, data_root, preset,
                               legacy=not Path(preset).is_file())
        check_config(data, budget, preset)
        name = str(data.get("name", Path(preset).stem))
        run = RunDir.create(runs_dir or Path(str(data.get("runs_dir", "runs"))), f"{name}-{budget}")
    # the experiment this run directory holds, with the overrides of every (re)start: a later
    # --resume without them continues the same experiment
    import yaml

    kind = data.get("kind")
    table = runners()
    if kind not in table:
        raise ConfigError(f"{preset or run.path}: unknown experiment kind {kind!r}; known: {', '.join(sorted(table)) or 'none'}")
    run.attach_log_file()
    typer.echo(f"run directory: {run.path}")
    with experiment_record(run.path / "sweep.yaml", yaml.safe_dump(data, sort_keys=False)):
        _, report = run_job(run, lambda: table[kind](data, run, budget, resume is not None))
    from retinassl.report.html import build_report

    pretrainings = [*(run.path / "pretrain").glob("*/run.json"), *(run.path / "pretrain").glob("*/seed-*/run.json")]
    for record in sorted(pretrainings):  # each pretraining's loss curve and figures (pretrain_seeds: each seed's)
        typer.echo(f"pretraining report: {build_report(RunDir(record.parent))}")
    typer.echo(f"report: {report}")

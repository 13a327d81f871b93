"""``retinassl evaluate probe|finetune ENCODER [CONFIG] [key=value ...]``: evaluate one encoder.

Both commands run the transfer protocol of :mod:`retinassl.sweeps.transfer` with a single
initialisation (the encoder) and a single protocol: every task, label fraction, seed and fold of
CONFIG (a transfer experiment: a packaged preset such as ``idrid-transfer``, or a YAML file;
default ``transfer-demo``, synthetic data), into a run directory with the results table,
predictions and a report.
"""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.cli.common import RESUME, RUNS_DIR, run_job, split_args

app = typer.Typer(no_args_is_help=True, help="Evaluate an encoder: linear probe or fine-tuning over "
                                             "label fractions, seeds and folds.")

ENCODER = typer.Argument(..., help="An encoder checkpoint directory (.../encoder), external weights "
                                   "(.safetensors), or 'scratch'.")
ARGS = typer.Argument(None, help="[CONFIG] [key=value ...]: a transfer experiment (preset or YAML; "
                                 "default transfer-demo), then overrides such as fractions=[0.1,1.0] "
                                 "seeds=[0].", show_default=False)
BUDGET = typer.Option(None, "--budget", help="Apply the experiment's smoke/cpu/full budget.")
NAME = typer.Option(None, "--name", help="The initialisation's name in results (default: from the "
                                         "path).")

DEFAULT_CONFIG = "transfer-demo"


def _evaluate(protocol: str, encoder: str, args: list[str] | None, budget: str | None,
              name: str | None, resume: Path | None, runs_dir: Path | None) -> None:
    import yaml

    from retinassl.atomic import write_text
    from retinassl.config import apply_overrides, read_yaml
    from retinassl.sweeps.transfer import run_transfer
    from retinassl.sweeps.transfer_config import resolve_config
    from retinassl.io.rundir import RunDir

    source, overrides = split_args(args, DEFAULT_CONFIG)
    if resume is not None:
        run = RunDir.resume(resume)
        data = apply_overrides(read_yaml(run.path / "evaluate.yaml"), overrides)
    else:
        data = apply_overrides(read_yaml(source), overrides)
        from retinassl.models.initialize import init_label

        label = name or init_label(encoder)
        data.update({"inits": [{"name": label, "init": encoder}], "reference": label,
                     "protocols": [protocol]})
        data["name"] = f"{data.get('name', 'transfer')}-{protocol}"
        for override in (data.get("budgets") or {}).values():  # keep the encoder whatever the budget
            for key in ("inits", "reference", "protocols"):
                override.pop(key, None)
        root = runs_dir or Path(str(data.get("runs_dir", "runs")))
        run = RunDir.create(root, f"evaluate-{protocol}-{label}")
    write_text(run.path / "evaluate.yaml", yaml.safe_dump(data, sort_keys=False))  # with the overrides of every (re)start
    config = resolve_config(data, budget)
    run.attach_log_file()
    typer.echo(f"run directory: {run.path}")
    _, report = run_job(run, lambda: run_transfer(config, run))
    typer.echo((run.path / "comparison.md").read_text())
    typer.echo(f"report: {report}")


@app.command("probe")
def probe(encoder: str = ENCODER, args: list[str] = ARGS, budget: str = BUDGET, name: str = NAME,
          resume: Path = RESUME, runs_dir: Path = RUNS_DIR) -> None:
    """Linear probe (logistic regression on frozen, cached features) at every label fraction and
    seed; asserts afterwards that the encoder did not change."""
    _evaluate("probe", encoder, args, budget, name, resume, runs_dir)


@app.command("finetune")
def finetune(encoder: str = ENCODER, args: list[str] = ARGS, budget: str = BUDGET, name: str = NAME,
             resume: Path = RESUME, runs_dir: Path = RUNS_DIR) -> None:
    """Full fine-tuning (early stopping on a validation split carved from the labelled subset) at
    every label fraction and fine-tuning seed."""
    _evaluate("finetune", encoder, args, budget, name, resume, runs_dir)

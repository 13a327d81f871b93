"""``retinassl train CONFIG``: supervised training of an encoder (images or patches)."""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.cli.common import ALLOW_PICKLE, DATA_ROOT, OVERRIDES, RESUME, RUNS_DIR, SKIP_BAD, open_run, run_job


def train(config: str = typer.Argument(None, help="A YAML config file or a packaged preset name "
                                                  "(see `retinassl data list`); not needed with --resume.",
                                       show_default=False),
          overrides: list[str] = OVERRIDES, resume: Path = RESUME, runs_dir: Path = RUNS_DIR,
          skip_bad: bool = SKIP_BAD, allow_pickle: bool = ALLOW_PICKLE, data_root: Path = DATA_ROOT) -> None:
    """Train a supervised classifier (whole images, or patches with labels from lesion masks), then
    evaluate it on the test split. Writes runs/<name>-<time>/ with the encoder checkpoint,
    predictions, results.csv and an HTML report."""
    from retinassl.jobs.train import TrainConfig, run_train

    overrides = list(overrides or []) + (["model.allow_pickle=true"] if allow_pickle else [])
    cfg, run = open_run(TrainConfig, config, overrides, resume, runs_dir, skip_bad, data_root=data_root)
    metrics, report = run_job(run, lambda: run_train(cfg, run, resume=resume is not None))
    typer.echo("test: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    typer.echo(f"report: {report}")

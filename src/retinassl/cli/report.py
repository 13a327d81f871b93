"""``retinassl report RUN``: rebuild a run's HTML report from its results and predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.io.rundir import RunDir


def report(run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>-<time>).")) -> None:
    """Rebuild report/index.html of a run from results.csv, predictions/ and figures."""
    from retinassl.report.html import build_report

    path = build_report(RunDir(run_dir) if (run_dir / "run.json").is_file() else RunDir.resume(run_dir))
    typer.echo(f"report: {path}")

"""``retinassl demo``."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the run directory goes."),
         quick: bool = typer.Option(False, "--quick", help="Tiny settings (for tests and a first look).")) -> None:
    """Run the toolkit end to end on synthetic fundus images: generate data, preprocess, train a
    patch classifier, evaluate image-level AUC, and write an HTML report (a few minutes on 2 CPU cores)."""
    from ..demo import STAGES, run_demo

    typer.echo(f"demo: {len(STAGES)} stage(s) on synthetic data")
    run = run_demo(runs_dir, quick=quick)
    typer.echo(f"done. report: {run.path / 'report' / 'index.html'}")

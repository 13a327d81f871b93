"""``retinassl demo``."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the run directory goes."),
         quick: bool = typer.Option(False, "--quick", help="Tiny settings (for tests and a first look).")) -> None:
    """Run the toolkit end to end on synthetic fundus images and write one HTML report: a supervised
    patch classifier with heatmaps, the patch SSL-GAN with 10 labelled images, OCT layer segmentation
    -> thickness maps -> fundus-to-thickness pretraining, and pretraining + transfer evaluation
    (under 10 minutes on 2 CPU cores)."""
    from retinassl.demo.stages import STAGES, run_demo

    typer.echo(f"demo: {len(STAGES)} stage(s) on synthetic data")
    run = run_demo(runs_dir, quick=quick)
    typer.echo(f"done. report: {run.path / 'report' / 'index.html'}")

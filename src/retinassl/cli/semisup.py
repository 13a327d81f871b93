"""``retinassl semisup train|evaluate|heatmap``: the patch SSL-GAN (or a supervised patch baseline)
trained on a few labelled images, evaluated, and applied to new images."""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.cli.common import ALLOW_PICKLE, DATA_ROOT, OVERRIDES, RESUME, RUNS_DIR, SKIP_BAD, open_run, run_job

app = typer.Typer(no_args_is_help=True, help="Semi-supervised patch classification (the patch "
                                             "SSL-GAN of Lecouat et al. 2018).")


@app.command()
def train(config: str = typer.Argument(None, help="A YAML config or preset (e.g. ssl-gan, "
                                                  "demo-ssl-gan); not needed with --resume.",
                                       show_default=False),
          overrides: list[str] = OVERRIDES, resume: Path = RESUME, runs_dir: Path = RUNS_DIR,
          skip_bad: bool = SKIP_BAD, allow_pickle: bool = ALLOW_PICKLE, data_root: Path = DATA_ROOT) -> None:
    """Train a patch classifier with n_labelled labelled images (the rest of the training cohort,
    and an optional pool, unlabelled), then evaluate it on the test split: patch, image and
    localisation AUC, predictions, heatmaps, results.csv and an HTML report in runs/<name>-<time>/."""
    from retinassl.jobs.patch_config import SemisupTrainConfig
    from retinassl.jobs.semisup import run_semisup_train

    overrides = list(overrides or []) + (["learner.model.allow_pickle=true"] if allow_pickle else [])
    cfg, run = open_run(SemisupTrainConfig, config, overrides, resume, runs_dir, skip_bad, data_root=data_root)
    metrics, report = run_job(run, lambda: run_semisup_train(cfg, run, resume=resume is not None))
    _echo_metrics(metrics)
    typer.echo(f"report: {report}")


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="A `retinassl semisup train` run directory.")) -> None:
    """Evaluate a run's saved classifier on its test split again (predictions, heatmaps, metrics)."""
    from retinassl.report.html import build_report
    from retinassl.jobs.semisup import evaluate_run, load_run_config

    run, cfg = load_run_config(run_dir)
    metrics = evaluate_run(cfg, run)
    _echo_metrics(metrics)
    typer.echo(f"report: {build_report(run)}")


@app.command()
def heatmap(image: Path = typer.Argument(..., help="A fundus image file."),
            checkpoint: Path = typer.Option(..., "--checkpoint", help="A `semisup train` run "
                                            "directory (or its classifier/ folder)."),
            out: Path = typer.Option(None, "--out", help="Output PNG (default: runs/heatmaps/"
                                     "<image>-heatmap.png; never beside the input data).",
                                     show_default=False),
            mask: Path = typer.Option(None, "--mask", help="A lesion mask to outline (any folder, "
                                      "e.g. IDRiD's ground-truth folder).", show_default=False)) -> None:
    """Overlay a classifier's patch probabilities (Gaussian-smoothed) on one image; writes a PNG."""
    from retinassl.jobs.semisup import heatmap_image

    if not image.is_file():
        from retinassl.errors import DataError

        raise DataError("image file does not exist", path=image)
    path, probs, score = heatmap_image(image, checkpoint, out, mask)
    typer.echo(f"image score: {score:.3f} ({probs.size} patches)")
    typer.echo(f"heatmap: {path}")


def _echo_metrics(metrics: dict[str, float]) -> None:
    """The test metrics on one line, the training's bookkeeping (seconds, steps, the validation pass it
    kept) on another: a validation AUC is not a test AUC."""
    from retinassl.report.tables import BOOKKEEPING

    test = {k: v for k, v in metrics.items() if not BOOKKEEPING.match(k)}
    training = {k: v for k, v in metrics.items() if BOOKKEEPING.match(k)}
    typer.echo("test: " + ", ".join(f"{k}={v:.4g}" for k, v in test.items()))
    if training:
        typer.echo("training: " + ", ".join(f"{k}={v:.4g}" for k, v in training.items()))

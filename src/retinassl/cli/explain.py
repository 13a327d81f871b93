"""``retinassl explain gradcam|tsne``: Grad-CAM overlays of a fine-tuned classifier, and t-SNE maps
of an encoder's embeddings, on the data of a transfer experiment (preset or YAML)."""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.cli.common import DATA_ROOT, RUNS_DIR, split_args
from retinassl.cli.evaluate import DEFAULT_CONFIG
from retinassl.models.initialize import init_label

app = typer.Typer(no_args_is_help=True, help="Explain models: Grad-CAM overlays and t-SNE maps.")

ARGS = typer.Argument(None, help="[CONFIG] [key=value ...]: the transfer experiment whose data is "
                                 "used (default transfer-demo), then overrides.", show_default=False)


def _setup(args: list[str] | None, kind: str, label: str, runs_dir: Path | None,
           data_root: Path | None = None):
    from retinassl.cli.sweep import with_data_roots
    from retinassl.config import apply_overrides, read_yaml
    from retinassl.sweeps.transfer_config import downstream_only, resolve_config
    from retinassl.io.rundir import RunDir

    source, overrides = split_args(args, DEFAULT_CONFIG)
    data = downstream_only(apply_overrides(read_yaml(source), overrides))
    for key in ("budgets", "evaluate_on"):  # the base's settings, its downstream data only: no external sets
        data.pop(key, None)
    config = resolve_config(with_data_roots(data, None, data_root, source, legacy=not Path(source).is_file()), None)
    run = RunDir.create(runs_dir or config.runs_dir, f"explain-{kind}-{label}")
    run.attach_log_file()
    return config, run


def _prepared(config, run, preprocess: dict | None):
    from retinassl.data.preprocess import PreprocessConfig
    from retinassl.sweeps.transfer_data import prepare_downstream

    if preprocess:  # the checkpoint's own preprocessing
        config = config.model_copy(update={"preprocess": PreprocessConfig.model_validate(preprocess)})
    return prepare_downstream(config, run.sub("data"))


@app.command("gradcam")
def gradcam(model: Path = typer.Argument(..., help="A fine-tuned classifier directory (e.g. "
                                                   "runs/<sweep>/models/<task>-<init>)."),
            args: list[str] = ARGS,
            images: int = typer.Option(8, "--images", help="Test images to explain (half positive)."),
            seed: int = typer.Option(0, "--seed", help="Which test images are drawn."),
            method: str = typer.Option("gradcam", "--method", help="gradcam, or rollout (attention "
                                       "rollout of a ViT encoder: class-agnostic)."),
            runs_dir: Path = RUNS_DIR, data_root: Path = DATA_ROOT) -> None:
    """Grad-CAM (MONAI) at the encoder's deepest feature map (a ViT's patch tokens entering its last
    block), or a ViT's attention rollout, for test images of the experiment's data; writes one
    overlay figure and a report."""
    from retinassl.models.checkpoint import read_encoder_meta
    from retinassl.sweeps.transfer_data import evaluation_folds, gradcam_rows
    from retinassl.metrics.tasks import TaskSpec
    from retinassl.explain.gradcam import gradcam_gallery
    from retinassl.report.html import build_report

    if method not in ("gradcam", "rollout"):
        raise typer.BadParameter(f"--method must be gradcam or rollout, got {method!r}")
    meta = read_encoder_meta(model)
    label = init_label(str(model))  # the classifier directory's name
    config, run = _setup(args, "gradcam", label, runs_dir, data_root)
    prepared = _prepared(config, run, meta.get("preprocess"))
    task = TaskSpec.model_validate(meta["task"])
    test = evaluation_folds(prepared.manifest, task, config.folds, config.seed)[0][2]
    rows = gradcam_rows(task, prepared.manifest, test, images, seed)
    name = f"gradcam-{label}.png" if method == "gradcam" else f"gradcam-rollout-{label}.png"
    path = gradcam_gallery(model, prepared, rows, run.report_dir / "figures" / name, title=label,
                           method=method)  # type: ignore[arg-type]
    run.update_status(status="finished")
    typer.echo(f"figure: {path}")
    typer.echo(f"report: {build_report(run)}")


@app.command("tsne")
def tsne(encoder: str = typer.Argument(..., help="An encoder checkpoint directory, or 'scratch'."),
         args: list[str] = ARGS,
         task: str = typer.Option(None, "--task", help="Colour by this task's label (default: the "
                                                       "experiment's first task)."),
         runs_dir: Path = RUNS_DIR, data_root: Path = DATA_ROOT) -> None:
    """t-SNE of the encoder's frozen embeddings of the experiment's labelled images (features from
    the feature cache), coloured by label."""
    import torch

    from retinassl.jobs.features import extract_features
    from retinassl.jobs.probe import assert_frozen
    from retinassl.sweeps.transfer_data import class_labels
    from retinassl.explain.embedding import tsne_figure
    from retinassl.models.initialize import initial_encoder
    from retinassl.report.html import build_report

    label = init_label(encoder)
    config, run = _setup(args, "tsne", label, runs_dir, data_root)
    meta_preprocess = None
    if encoder != "scratch":
        from retinassl.models.checkpoint import read_encoder_meta

        meta_preprocess = read_encoder_meta(encoder).get("preprocess")
    prepared = _prepared(config, run, meta_preprocess)
    spec = next((t for t in config.tasks if t.name == (task or config.tasks[0].name)), None)
    if spec is None:
        from retinassl.errors import ConfigError

        raise ConfigError(f"no task {task!r}; the experiment has {[t.name for t in config.tasks]}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = initial_encoder(config.model.model_copy(update={"init": encoder})).encoder
    with assert_frozen(model):
        features = extract_features(model, prepared, config.data.cache_dir)
    rows = spec.labelled_rows(prepared.manifest)
    path = tsne_figure(features.values[rows], class_labels(spec, prepared.manifest)[rows],
                       run.report_dir / "figures" / f"tsne-{label}.png",
                       title=f"{label}: frozen embeddings ({spec.name})", seed=config.seed)
    run.update_status(status="finished")
    typer.echo(f"figure: {path}")
    typer.echo(f"report: {build_report(run)}")


@app.command("reconstructions")
def reconstructions(pretrain_run: Path = typer.Argument(..., help="An mae pretraining run directory (e.g. "
                                                          "runs/<sweep>/pretrain/mae)."),
                    images: int = typer.Option(6, "--images", help="Pool images to reconstruct."),
                    seed: int = typer.Option(0, "--seed", help="Which images, and which patches are hidden."),
                    runs_dir: Path = RUNS_DIR) -> None:
    """Masked-autoencoder reconstructions of seeded images of a pretraining run's own pool, from its
    newest training checkpoint (the decoder lives only there): original | visible patches |
    reconstruction; writes one figure and a report in a new run directory."""
    from retinassl.cli.common import run_job
    from retinassl.io.rundir import RunDir
    from retinassl.figures.reconstructions import FIGURE_PREFIX
    from retinassl.jobs.reconstructions import reconstructions_of_run

    if images < 1:
        raise typer.BadParameter(f"--images must be at least 1, got {images}")
    label = init_label(str(pretrain_run))
    run = RunDir.create(runs_dir or Path("runs"), f"explain-reconstructions-{label}")
    run.attach_log_file()
    figure = run.report_dir / "figures" / f"{FIGURE_PREFIX}{label}.png"
    path, report = run_job(run, lambda: reconstructions_of_run(pretrain_run, figure, images=images, seed=seed),
                           status=lambda p: {"figure": str(p)})
    typer.echo(f"figure: {path}")
    typer.echo(f"report: {report}")

"""``retinassl segment train|predict|evaluate|curve``: vessel segmentation with a U-Net on any encoder."""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.io.rundir import RunDir
from retinassl.cli.predict import MATCH_SCALE, OPTIONS, key_values
from retinassl.cli.common import ALLOW_PICKLE, DATA_ROOT, OVERRIDES, RESUME, RUNS_DIR, SKIP_BAD, open_run, run_job

app = typer.Typer(no_args_is_help=True, help="Vessel segmentation: a U-Net whose encoder is any "
                  "registered encoder or encoder checkpoint; metrics inside the field of view.")

FOV_THRESHOLD = typer.Option(None, "--fov-threshold", help="FOV estimation threshold for images "
                             "without FOV masks (default: the model's).", show_default=False)
FOV_BACKGROUND = typer.Option(None, "--fov-background/--no-fov-background", help="For images without "
                              "FOV masks, keep the FOV brighter than the background read in the image "
                              "corners, for cameras whose outside is not black, e.g. STARE (default: "
                              "the model's).", show_default=False)
SIZE = typer.Option(None, "--size", help="Cache side in pixels (default: the model's, rescaled so that "
                    "the field of view spans as many pixels as in its training images; see --match-scale).",
                    show_default=False)
CROP_FOV = typer.Option(None, "--crop-fov/--no-crop-fov", help="Crop to the FOV before resizing "
                        "(default: the model's).", show_default=False)


def _preprocess(segmenter, fov_threshold: float | None, size: int | None, crop_fov: bool | None,
                fov_background: bool | None = None):
    """The model's preprocessing with the command line's changes (scale and FOV estimation)."""
    update = {k: v for k, v in {"fov_threshold": fov_threshold, "size": size, "crop_fov": crop_fov,
                                "fov_background": fov_background}.items() if v is not None}
    return segmenter.preprocess.model_copy(update=update)


@app.command("train")
def train(config: str = typer.Argument("drive-vessels", help="A YAML config or a packaged preset "
                                       "(drive-vessels)."),
          overrides: list[str] = OVERRIDES, resume: Path = RESUME, runs_dir: Path = RUNS_DIR,
          skip_bad: bool = SKIP_BAD, allow_pickle: bool = ALLOW_PICKLE, data_root: Path = DATA_ROOT) -> None:
    """Train a U-Net on random FOV patches, then evaluate it on the test split (and on the
    config's evaluate_on datasets, e.g. STARE). Writes runs/<name>-<time>/ with segmenter/ (the
    model), encoder/, predictions/ (PNG probability maps and binary masks), results.csv and an HTML
    report with overlays."""
    from retinassl.jobs.segment import run_segment_train
    from retinassl.jobs.segment_config import SegmentConfig

    overrides = list(overrides or []) + (["model.allow_pickle=true"] if allow_pickle else [])
    cfg, run = open_run(SegmentConfig, config, overrides, resume, runs_dir, skip_bad, data_root=data_root)
    metrics, report = run_job(run, lambda: run_segment_train(cfg, run, resume=resume is not None))
    typer.echo(", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    typer.echo(f"report: {report}")


@app.command("predict")
def predict(model: Path = typer.Argument(..., help="A segmenter directory or a run directory "
                                         "holding segmenter/."),
            images: list[Path] = typer.Argument(None, help="Image files (or give --source).",
                                                show_default=False),
            out: Path = typer.Option(..., "--out", help="Folder for <id>-prob.png (8-bit "
                                     "probabilities) and <id>-vessels.png (binary masks)."),
            source: str = typer.Option(None, "--source", help="A data source instead of image "
                                       "files (drive, stare, glob...).", show_default=False),
            options: list[str] = OPTIONS, fov_threshold: float = FOV_THRESHOLD, size: int = SIZE,
            crop_fov: bool = CROP_FOV, fov_background: bool = FOV_BACKGROUND,
            cache_dir: Path = typer.Option(None, "--cache-dir", show_default=False),
            match_scale: bool = MATCH_SCALE) -> None:
    """Write vessel probability maps and binary masks, at each image's original resolution."""
    from retinassl.data.cache import Cache
    from retinassl.data.manifest import Manifest
    from retinassl.data.sources import load_source
    from retinassl.data.sources.files import safe_id, stem
    from retinassl.errors import ConfigError
    from retinassl.jobs.segment import load_segmenter, predict_images

    segmenter = load_segmenter(model)
    if source:
        manifest = load_source(source, **key_values(options))
    elif images:
        import os

        paths = [p.resolve() for p in images]
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
        manifest = Manifest.from_records([{"id": safe_id(stem(p.name)), "image": str(p.relative_to(root))}
                                          for p in paths], root, name="images")
    else:
        raise ConfigError("give image files or --source")
    from retinassl.data.fov_scale import FOV_KEY, prepare_at_model_scale

    prepared = prepare_at_model_scale(lambda c: Cache(cache_dir).prepare(manifest, c, mask_columns=["mask_fov"]),
                                      _preprocess(segmenter, fov_threshold, size, crop_fov, fov_background),
                                      segmenter.meta.get(FOV_KEY), enabled=match_scale and size is None)
    written = predict_images(segmenter, prepared, out)
    typer.echo(f"wrote {len(written)} files to {out}")


@app.command("evaluate")
def evaluate(model: Path = typer.Argument(..., help="A segmenter directory or a run directory "
                                          "holding segmenter/."),
             source: str = typer.Option(..., "--source", help="Data source of the images and "
                                        "vessel masks (stare, drive, glob, manifest...)."),
             options: list[str] = OPTIONS,
             name: str = typer.Option(None, "--name", help="Dataset name in the results (default: "
                                      "the source).", show_default=False),
             split: str = typer.Option(None, "--split", help="Only this split (default: every "
                                       "image with a vessel mask).", show_default=False),
             exclude_flag: str = typer.Option(None, "--exclude-flag", help="Leave out rows whose "
                                              "value in this manifest column is 1.", show_default=False),
             fov_threshold: float = FOV_THRESHOLD, size: int = SIZE, crop_fov: bool = CROP_FOV,
             fov_background: bool = FOV_BACKGROUND, runs_dir: Path = RUNS_DIR, match_scale: bool = MATCH_SCALE,
             figures: int = typer.Option(4, "--figures", help="Overlays in the report.")) -> None:
    """Evaluate a trained model on a dataset (cross-dataset: e.g. train on DRIVE, test on STARE):
    Dice, sensitivity, specificity, accuracy and pixel AUC inside the FOV, with bootstrap intervals
    over images; predictions, overlays, results.csv and a report in a new run directory."""
    from retinassl.config import DataConfig
    from retinassl.jobs.segment import load_segmenter, run_segment_evaluate
    from retinassl.jobs.segment_config import EvalDatasetConfig
    from retinassl.report.html import build_report

    segmenter = load_segmenter(model)
    preprocess = _preprocess(segmenter, fov_threshold, size, crop_fov, fov_background)
    spec = EvalDatasetConfig(name=name or source, data=DataConfig(source=source, options=key_values(options)),
                             preprocess=preprocess, split=split, exclude_flag=exclude_flag)
    run = RunDir.create(runs_dir or Path("runs"), f"segment-evaluate-{spec.name}")
    run.attach_log_file()
    typer.echo(f"run directory: {run.path}")
    result = run_segment_evaluate(segmenter, spec, run, n_figures=figures,
                                  match_scale=match_scale and size is None)  # an explicit --size wins
    run.update_status(status="finished", metrics=result.summary)
    s = result.summary
    typer.echo(f"{spec.name}: dice {s['dice']:.4f} sensitivity {s['sensitivity']:.4f} specificity "
               f"{s['specificity']:.4f} accuracy {s['accuracy']:.4f} auc {s['auc']:.4f} "
               f"({int(s['n_images'])} images)")
    typer.echo(f"report: {build_report(run)}")


@app.command("curve")
def curve(config: str = typer.Argument("drive-vessels", help="A YAML config or preset (the "
                                       "budget of every training)."),
          overrides: list[str] = OVERRIDES,
          init: list[str] = typer.Option(None, "--init", help="An initialisation: scratch, or "
                                         "NAME=PATH of an encoder checkpoint (repeatable).",
                                         show_default=False),
          sizes: str = typer.Option("1,2,5,10,20", "--sizes", help="Numbers of training images."),
          seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds."),
          resume: Path = RESUME, runs_dir: Path = RUNS_DIR, data_root: Path = DATA_ROOT) -> None:
    """Label-fraction curve: one U-Net per (initialisation, number of training images, seed),
    each tested on the test split; one results table (same format as the classification
    protocol) and a report. With --resume, finished combinations are skipped."""
    from retinassl.jobs.segment_config import SegmentConfig
    from retinassl.sweeps.vessel_curve import run_label_fraction_curve
    from retinassl.report.html import build_report

    inits: dict[str, str] = {}
    for item in init or ["scratch"]:
        if item == "scratch":
            inits["scratch"] = "scratch"
        else:
            label, _, path = item.rpartition("=")
            inits[label or Path(path).parent.name or path] = path
    cfg, run = open_run(SegmentConfig, config, overrides, resume, runs_dir, suffix="-curve", data_root=data_root)
    table = run_label_fraction_curve(cfg, run, inits, [int(s) for s in sizes.split(",")],
                                     [int(s) for s in seeds.split(",")])
    run.update_status(status="finished")
    dice = table[(table["metric"] == "dice") & (table["method"] == "segmentation")]
    summary = dice.groupby(["init", "n_labelled"])["value"].agg(["mean", "std", "count"])
    typer.echo(summary.to_string())
    typer.echo(f"report: {build_report(run)}")

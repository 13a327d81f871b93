"""``retinassl predict MODEL INPUTS... --out DIR``: apply any saved model to new images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from retinassl.cli.common import SKIP_BAD

OPTIONS = typer.Option(None, "--option", "-o", help="A data-source option as key=value (repeatable), "
                       "e.g. root=/data/STARE, or for the glob source image='*/images/*.tif'.",
                       show_default=False)
PREPROCESS = typer.Option(None, "--preprocess", help="Override the model's recorded preprocessing, "
                          "key=value (repeatable, e.g. size=384); the difference is logged.",
                          show_default=False)
MATCH_SCALE = typer.Option(True, "--match-scale/--no-match-scale", help="Rescale the images so that "
                           "their field of view spans as many pixels as the model's training images did "
                           "(recorded in the model; logged). Off: the model's size as recorded.")
CACHE_DIR = typer.Option(None, "--cache-dir", help="Preprocessed-image cache (default: the toolkit's).",
                         show_default=False)


def key_values(items: list[str] | None, what: str = "--option") -> dict[str, Any]:
    """``key=value`` arguments as a mapping (values parsed as YAML scalars, aliases bounded)."""
    from retinassl.config import safe_load_bounded
    from retinassl.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = safe_load_bounded(raw, what) if raw else ""
        out[key.strip()] = raw if value is None else value
    return out


def predict(model: Path = typer.Argument(..., help="A saved model folder (model.json): a classifier, cross-modal regressor, "
                                         "patch classifier / SSL-GAN, vessel segmenter or OCT layer "
                                         "model; or a run directory holding one."),
            inputs: list[str] = typer.Argument(None, help="Image files, folders, glob patterns, or one "
                                               "manifest CSV (or give --source); for an OCT layer "
                                               "model, OCT exports (DICOM, .vol, .xml, stacks).",
                                               show_default=False),
            out: Path = typer.Option(..., "--out", help="A new (or empty) folder for predictions.csv "
                                     "(and heatmaps or vessel maps).", show_default=False),
            source: str = typer.Option(None, "--source", help="A data source instead of INPUTS "
                                       "(idrid, mx_fundus_oct, folder, glob...).", show_default=False),
            options: list[str] = OPTIONS, preprocess: list[str] = PREPROCESS,
            heatmaps: int = typer.Option(0, "--heatmaps", help="Patch classifiers: heatmap PNGs of the "
                                         "first N images."),
            explain: bool = typer.Option(False, "--explain", help="Classifiers and patch classifiers: "
                                         "overlays/<id>.png per image, the Grad-CAM of a whole-image "
                                         "classifier or the patch heatmap of a patch classifier, "
                                         "on the original image at its own size."),
            skip_bad: bool = SKIP_BAD, cache_dir: Path = CACHE_DIR, match_scale: bool = MATCH_SCALE) -> None:
    """Apply a trained model to new images with the preprocessing recorded with it: one CSV row per
    image (id, image, scores, the class at the model's operating threshold), written once all are
    done; unreadable images stop the command, or with --skip-bad get a row with the problem. An OCT
    layer model gives the boundaries and thickness of every B-scan of each export (one row per
    B-scan, files named by a salted label of the export, never its name)."""
    from retinassl.explain.overlays import image_overlays
    from retinassl.errors import ConfigError
    from retinassl.io.saved_model import is_saved_model, read_model_meta
    from retinassl.jobs.predict import input_manifest, predict as run_predict

    for sub in ("classifier", "segmenter", "regressor", "layer-model"):
        if not is_saved_model(model) and is_saved_model(model / sub):
            model = model / sub
    if is_saved_model(model) and read_model_meta(model)["kind"] == "layer-model":
        from retinassl.jobs.predict_oct import predict_layers, volume_inputs

        if source:
            raise ConfigError("an OCT layer model reads OCT exports given as INPUTS, not a --source")
        path = predict_layers(model, volume_inputs(inputs or []), out, skip_bad=skip_bad)
        typer.echo(f"predictions: {path}")
        return
    manifest = input_manifest(inputs or [], source, key_values(options))
    path = run_predict(model, manifest, out, cache_dir=cache_dir, skip_bad=skip_bad, heatmaps=heatmaps,
                       preprocess=key_values(preprocess, "--preprocess"),
                       overlays=image_overlays if explain else None, match_scale=match_scale)
    typer.echo(f"predictions: {path}")

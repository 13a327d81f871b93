"""``retinassl oct info|thickness|segment|train-seg|adapt-layers|pretrain``: OCT volumes (DICOM, HEYEX .vol/.xml,
NumPy/TIFF stacks) -> layer boundaries -> retinal-thickness maps, and the cross-modal pretraining
that learns those maps from fundus images (DeepRT, Holmberg et al. 2020).

Nothing these commands print, log or write contains a patient identifier or the input's file name:
volumes are described by their hashed patient key (see :mod:`retinassl.oct.identity`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from retinassl.cli.common import ALLOW_PICKLE, OVERRIDES, RESUME, RUNS_DIR, open_run, run_job

app = typer.Typer(no_args_is_help=True, help="OCT volumes: read, segment layers, thickness maps, "
                                             "cross-modal pretraining.")

VOLUME = typer.Argument(..., help="An OCT export: DICOM file or folder, HEYEX .vol or .xml, or a "
                                  ".npy/.tif stack with a .json spacing sidecar.", show_default=False)
INFRARED = typer.Option(None, "--infrared", help="The infrared-image DICOM (default: found beside "
                                                 "the OCT file).", show_default=False)
MODEL = typer.Option(None, "--model", help="A layer-segmentation model folder (from `retinassl oct "
                                           "train-seg`); default: the export's own layer annotations.",
                     show_default=False)


def _runs_dir(runs_dir: Path | None) -> Path:
    return runs_dir if runs_dir is not None else Path("runs")


def _private_run(root: Path, name: str, inputs: list[Path | None]):
    """A new run directory whose log and recorded errors never name ``inputs`` (file and folder
    names of exports often carry the patient's name and ID): they appear as salted labels."""
    from retinassl.io.rundir import RunDir
    from retinassl.oct.identity import redact_log_handlers, register_private

    register_private([p for p in inputs if p is not None])
    run = RunDir.create(root, name)
    run.attach_log_file()
    redact_log_handlers()
    typer.echo(f"run directory: {run.path}")
    return run


def _private_logs(paths: list) -> None:
    """Register ``paths`` as private and redact them from every log handler (see
    :mod:`retinassl.oct.identity`)."""
    from retinassl.oct.identity import redact_log_handlers, register_private

    register_private(paths)
    redact_log_handlers()


@app.command()
def info(volume: Path = VOLUME, infrared: Path = INFRARED) -> None:
    """Print what a volume holds (format, shape, spacing, laterality, date, hashed patient key,
    positions, localizer, layer annotations, warnings) as JSON."""
    from retinassl.oct.read import read_volume

    typer.echo(json.dumps(read_volume(volume, infrared).describe(), indent=1))


@app.command()
def thickness(volume: Path = VOLUME, model: Path = MODEL, infrared: Path = INFRARED,
              map_size: int = typer.Option(128, "--map-size", help="Side of the thickness map."),
              runs_dir: Path = RUNS_DIR,
              name: str = typer.Option("oct-thickness", "--name", help="Run name.")) -> None:
    """Retinal-thickness map (ILM to Bruch's membrane, micrometres) of one volume: writes
    thickness_map.npy (128x128 on the infrared field, 0 = undefined, the DeepRT format), a PNG with
    a colour bar, the ETDRS 9-sector table (etdrs.csv) and thickness.json into a new run directory."""
    from retinassl.methods.oct_layers import load_layer_model
    from retinassl.jobs.oct_thickness import compute_thickness, write_thickness
    from retinassl.oct.identity import redact
    from retinassl.oct.read import read_volume

    run = _private_run(_runs_dir(runs_dir), name, [volume, infrared])
    try:
        vol = read_volume(volume, infrared)
        layer_model = load_layer_model(model) if model is not None else None
        result = compute_thickness(vol, layer_model, map_size)
        paths = write_thickness(result, vol, run.path,
                                extra={"model": None if model is None else str(model)})
    except BaseException as exc:
        # the input's file name may be the patient's: the run records the error without it
        run.update_status(status="failed", error=redact(str(exc)).replace(str(volume), "<volume>")[:500])
        raise
    run.update_status(status="finished", outputs=sorted(p.name for p in paths.values()),
                      quality=result.quality)
    if result.etdrs is not None:
        typer.echo(result.etdrs.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    q = result.quality
    verdict = "passes" if q["passes"] else "fails: " + "; ".join(q["reasons"])
    typer.echo(f"quality: total variation {q['tv']:.4f}, {q['defined_fraction']:.0%} of the map "
               f"defined; {verdict}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}")


@app.command()
def segment(volume: Path = VOLUME, model: Path = typer.Option(..., "--model", help="A layer-"
            "segmentation model folder."), infrared: Path = INFRARED, runs_dir: Path = RUNS_DIR,
            name: str = typer.Option("oct-segment", "--name", help="Run name.")) -> None:
    """Segment the layer boundaries of a volume: boundaries.npy (K, n_bscans, width rows, NaN =
    undefined), boundaries.json and a PNG of the central B-scan."""
    import numpy as np

    from retinassl.atomic import write_text, write_with
    from retinassl.figures.oct import bscan_png
    from retinassl.methods.oct_layers import load_layer_model
    from retinassl.oct.identity import redact
    from retinassl.oct.read import read_volume

    run = _private_run(_runs_dir(runs_dir), name, [volume, infrared])
    try:
        vol = read_volume(volume, infrared)
        layer_model = load_layer_model(model)
        rows = layer_model.segment(vol)
    except BaseException as exc:
        run.update_status(status="failed", error=redact(str(exc))[:500])
        raise
    stack = np.stack([rows[n] for n in layer_model.boundaries]).astype(np.float32)
    write_with(run.path / "boundaries.npy", lambda fh: np.save(fh, stack, allow_pickle=False))
    write_text(run.path / "boundaries.json", json.dumps(
        {"boundary_names": list(layer_model.boundaries), "volume": vol.describe(),
         "undefined_fraction": float(np.isnan(stack).any(axis=0).mean()),
         "rows": "continuous row coordinate; pixel row r spans [r-0.5, r+0.5)"}, indent=1))
    mid = vol.shape[0] // 2
    bscan_png(vol.bscans[mid], {n: rows[n][mid] for n in layer_model.boundaries},
              run.path / "bscan_central.png", title=f"B-scan {mid}")
    run.update_status(status="finished")
    typer.echo(f"{len(layer_model.boundaries)} boundaries on {vol.shape[0]} B-scans; "
               f"undefined A-scans: {float(np.isnan(stack).any(axis=0).mean()):.1%}")


@app.command("train-seg")
def train_seg(config: str = typer.Argument(None, help="A YAML config or preset (default: the "
                                                       "oct-layers preset, synthetic volumes).",
                                           show_default=False),
              overrides: list[str] = OVERRIDES, resume: Path = RESUME, runs_dir: Path = RUNS_DIR) -> None:
    """Train a layer-segmentation U-Net on annotated B-scans (``volumes=[...]`` files with layer
    annotations, or synthetic volumes). The model folder is <run>/layer-model."""
    from retinassl.jobs.oct_layers import LayerTrainConfig, run_train_layers

    cfg, run = open_run(LayerTrainConfig, config, overrides, resume, runs_dir, default="oct-layers")
    _private_logs(list(cfg.volumes))
    metrics, _ = run_job(run, lambda: run_train_layers(cfg, run, resume=resume is not None)[1], report=False)
    typer.echo("validation: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    from retinassl.jobs.oct_layers import undefined_warning

    warning = undefined_warning(metrics)
    if warning:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)
        run.update_status(warnings=[warning])  # (run_job's status update came after the job's)
    typer.echo(f"model: {run.path / 'layer-model'}")


@app.command("adapt-layers")
def adapt_layers(config: str = typer.Argument(None, help="A YAML config or preset (default: the "
                                                         "oct-adapt-layers preset, the MX B-scans).",
                                              show_default=False),
                 overrides: list[str] = OVERRIDES, resume: Path = RESUME, runs_dir: Path = RUNS_DIR) -> None:
    """Adapt a layer model (``model=<run>/layer-model``) to real B-scans: the graph search's ILM/BM
    on the clean B-scans are pseudo-labels for a short fine-tuning; agreement with the graph search
    on held-out patients and the error on synthetic truth, before and after. The adapted model is
    <run>/layer-model, the numbers <run>/adapt.json."""
    from retinassl.jobs.oct_adapt import AdaptLayersConfig, run_adapt_layers

    cfg, run = open_run(AdaptLayersConfig, config, overrides, resume, runs_dir, default="oct-adapt-layers")
    _private_logs([])  # the job registers the B-scans' paths and ids once it has read the manifest
    summary, _ = run_job(run, lambda: run_adapt_layers(cfg, run, resume=resume is not None)[1],
                         status=lambda s: {"counts": s["counts"]})
    for when in ("before", "after"):
        r, syn = summary[when]["real"], summary[when]["synthetic"]
        typer.echo(f"{when}: graph-search agreement ILM {r['mad_ilm_px']:.2f} px, BM {r['mad_bm_px']:.2f} px "
                   f"({int(r['bscans'])} held-out B-scans); synthetic error ILM {syn['error_um_ilm']:.2f} um, "
                   f"BM {syn['error_um_bm']:.2f} um, all boundaries {syn['error_um_all']:.2f} um")
    typer.echo(f"model: {run.path / 'layer-model'}")


@app.command()
def pretrain(config: str = typer.Argument(None, help="A YAML config or preset (default: the "
                                                      "oct-cross-modal preset, synthetic eyes with "
                                                      "OCT).", show_default=False),
             overrides: list[str] = OVERRIDES, resume: Path = RESUME, runs_dir: Path = RUNS_DIR,
             allow_pickle: bool = ALLOW_PICKLE) -> None:
    """Cross-modal pretraining (DeepRT): an encoder + decoder learns the OCT thickness map from the
    fundus (``input=image``) or infrared (``input=ir_image``) image; maps from the manifest's
    thickness_map column, or segmented from its OCT volumes (``maps=segment layer_model=DIR``). The
    encoder lands in <run>/encoder like every pretrained encoder."""
    from retinassl.jobs.cross_modal import CrossModalRunConfig, run_cross_modal

    overrides = list(overrides or []) + (["model.allow_pickle=true"] if allow_pickle else [])
    cfg, run = open_run(CrossModalRunConfig, config, overrides, resume, runs_dir, default="oct-cross-modal")
    _private_logs([])  # the job registers the manifest's paths and ids once it has read them
    metrics, _ = run_job(run, lambda: run_cross_modal(cfg, run, resume=resume is not None),
                         title="cross-modal pretraining")
    typer.echo("test: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    typer.echo(f"encoder: {run.encoder_dir}")

"""The demo's cross-modal stage (DeepRT's three stages on small synthetic data, about a minute).

1. A layer-segmentation U-Net (ILM, BM) trained on annotated B-scans of small synthetic volumes.
2. One more volume exported as a Spectralis-like DICOM (with a made-up patient) and turned into a
   thickness map, ETDRS table and PNG by the same code as ``retinassl oct thickness``.
3. Infrared fundus images (DeepRT's input) of synthetic eyes paired with thickness maps computed by
   that model from their OCT volumes; an encoder + decoder learns infrared -> thickness; its encoder
   is saved like every pretrained encoder, and the test-set regression error is reported against
   the maps it learnt from, against the generator's exact maps, and against predicting the mean
   training map.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from retinassl.config import validate
from retinassl.io.results import append_results, read_results, result_row
from retinassl.io.rundir import RunDir

log = logging.getLogger(__name__)


def stage_cross_modal(ctx: Any) -> None:
    """Run the stage inside the demo run ``ctx.run`` (sub-runs under ``stages/``)."""
    from retinassl.data.synthetic import generate_dataset
    from retinassl.jobs.cross_modal import CrossModalRunConfig, run_cross_modal
    from retinassl.oct.dicom_write import write_oct_dicom
    from retinassl.jobs.oct_thickness import compute_thickness, write_thickness
    from retinassl.oct.read import read_volume
    from retinassl.oct.synthetic import synthetic_volumes
    from retinassl.jobs.oct_layers import LayerTrainConfig, run_train_layers

    quick = bool(getattr(ctx, "quick", False))
    root = ctx.run.path / "stages" / "cross-modal"
    shape = (9, 96, 64) if quick else (13, 128, 96)
    # 1. layer segmentation
    volumes = synthetic_volumes(4 if quick else 8, 11, shape, fundus_size=128, ir_size=64)
    seg_cfg = validate(LayerTrainConfig, {
        "name": "layers", "input_size": [64, 64],
        "model": {"arch": "unet", "kwargs": {"in_channels": 1, "channels": [8, 16, 32]}},
        "method": {"name": "oct-layers", "lr": 0.01},
        "engine": {"max_epochs": 100, "max_steps": 60 if quick else 80, "batch_size": 8,
                   "checkpoint_every_n_steps": -1}})
    seg_run = RunDir(root / "layers")
    seg_run.update_status(status="running", name="layers")
    layer_model, seg_metrics = run_train_layers(seg_cfg, seg_run, volumes)
    # 2. one DICOM export -> thickness map, ETDRS, PNG (no patient identifier in any output)
    test_volume, truth = synthetic_volumes(1, 12, shape, fundus_size=128, ir_size=64, with_truth=True)[0]
    export = root / "dicom-export"
    write_oct_dicom(export, test_volume, identifiers={"PatientName": "Demo^Patient",
                                                     "PatientID": "DEMO-0001"})
    volume = read_volume(export / "oct.dcm")
    result = compute_thickness(volume, layer_model)
    paths = write_thickness(result, volume, root / "thickness")
    figures = ctx.run.report_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths["png"], figures / "oct-thickness-map.png")
    import numpy as np

    both = np.isfinite(result.tmap) & (truth.thickness_map > 0)
    map_mae = float(np.abs(result.tmap[both] - truth.thickness_map[both]).mean()) if both.any() \
        else float("nan")
    # 3. cross-modal pretraining on fundus + segmented maps
    data = root / "paired-data"
    manifest = generate_dataset(data, 32 if quick else 48, size=128, with_oct=True, oct_shape=shape,
                                ir_size=64, seed=13)
    cm_cfg = validate(CrossModalRunConfig, {
        "name": "cross-modal", "input": "ir_image", "maps": "segment",
        "layer_model": str(seg_run.path / "layer-model"),
        "data": {"source": "manifest", "manifest": str(manifest.name), "cache_dir": str(root / "cache")},
        "preprocess": {"size": 64}, "model": {"arch": "resnet18", "kwargs": {"in_channels": 1}},
        "method": {"name": "cross-modal", "lr": 2e-3},
        "engine": {"max_epochs": 2 if quick else 12, "batch_size": 16, "checkpoint_every_n_steps": -1},
        "predictions": 2 if quick else 4})
    cm_run = RunDir(root / "pretrain")
    cm_run.update_status(status="running", name="cross-modal")
    metrics = run_cross_modal(cm_cfg, cm_run, manifest=manifest)
    append_results(ctx.run.results_file, read_results(cm_run.results_file).to_dict("records"))
    rows = [result_row(experiment="demo-oct", task="oct-layers", method="oct-layers", init="scratch",
                       protocol="validation", metric=k, value=v)
            for k, v in seg_metrics.items() if k.startswith(("dice", "boundary_error_um"))]
    rows.append(result_row(experiment="demo-oct", task="thickness-map", method="oct-layers",
                           init="scratch", protocol="test", metric="map_mae_um", value=map_mae))
    append_results(ctx.run.results_file, rows)
    for path in (cm_run.report_dir / "figures").glob("crossmodal-*.png"):
        shutil.copyfile(path, figures / path.name)
    log.info("cross-modal (OCT): layer Dice %.3f, boundary error %.1f um, DICOM map error %.1f um; "
             "infrared -> thickness MAE %.1f um (mean training map alone: %.1f um; a few dozen "
             "training eyes do not beat it, see benchmarks/results/oct_crossmodal.md); encoder in %s",
             seg_metrics["dice_layers"], seg_metrics["boundary_error_um"], map_mae,
             metrics.get("mae_um", float("nan")), metrics.get("baseline_mae_um", float("nan")),
             cm_run.encoder_dir)

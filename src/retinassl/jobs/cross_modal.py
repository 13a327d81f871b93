"""``retinassl oct pretrain``: cross-modal pretraining on fundus image + thickness map pairs, the
encoder checkpoint, and the regression error on the test split.

Targets are the manifest's ``thickness_map`` files (``maps: manifest``; the synthetic generator's
exact maps, or DeepRT-format maps a user computed), or maps computed here from each row's OCT volume
with a layer-segmentation model (``maps: segment``, ``layer_model``): the full three-stage scheme of
DeepRT (segmentation -> thickness maps -> fundus-to-thickness regression). Rows of the ``train``
split train, ``val`` monitors (the encoder of the best validation epoch is kept), ``test`` measures
the regression error (mean absolute error in micrometres over defined pixels; with ``maps: segment``
also against the manifest's maps when they exist, i.e. the synthetic truth).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from retinassl.models.checkpoint import encoder_meta, save_encoder
from retinassl.models.initialize import EncoderInput, check_encoder_inputs, model_encoder_inputs
from retinassl.models.published import with_published
from retinassl.config import DataConfig, EngineConfig, ModelConfig, Section, to_yaml
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.cache import Cache
from retinassl.data.loading import load_manifest
from retinassl.data.manifest import PATH_COLUMNS, Manifest, is_missing
from retinassl.engine.fit import fit
from retinassl.errors import ConfigError, DataError
from retinassl.methods.base import seeded_method
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import module_state, save_model
from retinassl.oct.identity import private_label, register_private
from retinassl.oct.paired import ThicknessPairs, input_manifest

log = logging.getLogger(__name__)


class CrossModalRunConfig(Section):
    """A cross-modal pretraining run.

    Attributes:
        name, seed, runs_dir: the run.
        data: the paired data (default: synthetic eyes with OCT).
        input: ``image`` (colour fundus) or ``ir_image`` (infrared, DeepRT's input).
        maps: ``manifest`` (the ``thickness_map`` column) or ``segment`` (computed from
            ``oct_volume`` with ``layer_model``).
        layer_model: a layer-segmentation model folder (for ``maps: segment``).
        on_bad_map: ``mask`` (maps failing the quality check are left out of the loss) or
            ``error``.
        preprocess: how the input images are prepared (recorded in the encoder checkpoint).
        model: the encoder.
        method: ``cross-modal`` settings.
        engine: training settings.
        predictions: test pairs drawn as figures in the report.
        deviant_um: the test errors are also reported over the *deviant* pixels, where the target
            departs from the mean training map by more than this many micrometres (oedema,
            thinning): there, predicting the typical map fails and the fundus image must be read.
    """

    name: str = "cross-modal"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig(source="synthetic", options={
        "n_images": 200, "size": 256, "with_oct": True, "oct_shape": [25, 248, 256], "seed": 0})
    input: Literal["image", "ir_image"] = "image"
    maps: Literal["manifest", "segment"] = "manifest"
    layer_model: Path | None = None
    on_bad_map: Literal["mask", "error"] = "mask"
    preprocess: PreprocessConfig = PreprocessConfig(size=128)
    model: ModelConfig = ModelConfig(arch="resnet18")
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "cross-modal"})
    engine: EngineConfig = EngineConfig(max_epochs=20, batch_size=32, checkpoint_every_n_steps=200)
    predictions: int = Field(6, ge=0)
    deviant_um: float = Field(30.0, gt=0)

    def input_preprocess(self) -> PreprocessConfig:
        """How the inputs are really prepared: infrared images are one channel, with neither a
        fundus field of view to crop to nor one to mask."""
        if self.input == "ir_image":
            return self.preprocess.model_copy(update={"channels": 1, "crop_fov": False, "mask_outside_fov": False})
        return self.preprocess

    def encoder_inputs(self) -> list[EncoderInput]:
        """``model.init`` and the inputs it will see (:func:`~retinassl.models.initialize.check_encoder_inputs`)."""
        return model_encoder_inputs(self, CrossModalRunConfig.input_preprocess)


def segmented_maps(manifest: Manifest, layer_model: Path, map_size: int = 128) -> tuple[list[np.ndarray], list[dict]]:
    """Thickness maps of every row's OCT volume with a layer-segmentation model (DeepRT stages 1-2),
    and each map's quality."""
    from retinassl.methods.oct_layers import load_layer_model
    from retinassl.jobs.oct_thickness import compute_thickness
    from retinassl.oct.read import read_volume

    model = load_layer_model(layer_model)
    maps, quality = [], []
    for r in range(len(manifest)):
        path = manifest.path(r, "oct_volume")
        if path is None:
            raise DataError("no OCT volume for this row (maps: segment needs oct_volume)", row=r,
                            item=str(manifest.frame.at[r, "id"]))
        result = compute_thickness(read_volume(path), model, map_size)
        maps.append(np.nan_to_num(result.tmap, nan=0.0).astype(np.float32))
        quality.append(result.quality)
    return maps, quality


def register_private_rows(manifest: Manifest) -> None:
    """Register every file path and id of the manifest's rows as private (patient-named exports):
    logs and the recorded error carry a salted label instead (see
    :func:`retinassl.oct.identity.register_private`)."""
    frame = manifest.frame
    for column in PATH_COLUMNS:
        if column in frame.columns:
            register_private([manifest.path(r, column) for r in range(len(frame))])
            register_private([str(v) for v in frame[column] if not is_missing(v)])
    register_private([str(v) for v in frame["id"] if any(c.isalpha() for c in str(v))
                      and len(str(v)) >= 4], "id")


@torch.no_grad()
def predict_maps(method: Any, dataset: ThicknessPairs, rows: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Predicted thickness ``(len(rows), S, S)`` micrometres for dataset rows."""
    method.eval()
    out = []
    for s in range(0, len(rows), batch_size):
        batch = torch.stack([dataset[int(r)]["image"] for r in rows[s:s + batch_size]])
        out.append(method.forward(batch)[:, 0].float().numpy())
    size = dataset.targets.shape[-1]
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


def regression_errors(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """MAE and RMSE in micrometres over the pixels where ``mask`` is set, and their count."""
    m = mask > 0
    if not m.any():
        return {"mae_um": float("nan"), "rmse_um": float("nan"), "pixels": 0.0}
    err = pred[m] - target[m]
    return {"mae_um": float(np.abs(err).mean()), "rmse_um": float(np.sqrt((err ** 2).mean())),
            "pixels": float(m.sum())}


def _mean_map(dataset: ThicknessPairs, rows: np.ndarray) -> np.ndarray:
    """Per-pixel mean of the defined training targets ``(S, S)`` micrometres (the overall mean
    where no training target is defined)."""
    mask = dataset.masks[rows] > 0
    if not mask.any():
        return np.zeros(dataset.targets.shape[1:], np.float32)
    total = (dataset.targets[rows] * mask).sum(0)
    count = mask.sum(0)
    overall = float(total.sum() / count.sum())
    return np.where(count > 0, total / np.maximum(count, 1), overall).astype(np.float32)


def run_cross_modal(config: CrossModalRunConfig, run: RunDir, resume: bool = False,
                    manifest: Manifest | None = None) -> dict[str, float]:
    """Pretrain, save the encoder into ``run.encoder_dir``, evaluate on the test split.

    Returns:
        test metrics: ``mae_um``/``rmse_um`` against the targets, ``baseline_mae_um`` (predicting
        the mean training map), the same three over the deviant pixels (``*_deviant``,
        ``pixels_deviant``; see ``deviant_um``), with ``maps: segment`` also ``*_vs_manifest`` against the
        manifest's maps, and the quality counts.
    """
    config = with_published(config)  # model.weights: the published model's architecture and inputs
    preprocess = config.input_preprocess()
    check_encoder_inputs(config)  # before the config is recorded
    run.write_config(to_yaml(config))
    manifest = manifest if manifest is not None else load_manifest(config.data)
    register_private_rows(manifest)
    pairs = input_manifest(manifest, config.input, "oct_volume" if config.maps == "segment" else "thickness_map")
    prepared = Cache(config.data.cache_dir).prepare(pairs, preprocess, workers=max(1, config.data.workers),
                                                    mask_columns=[])
    maps = None
    if config.maps == "segment":
        if config.layer_model is None:
            raise ConfigError("maps: segment needs layer_model (a folder from `retinassl oct train-seg`)")
        maps, _ = segmented_maps(prepared.manifest, config.layer_model)
    dataset = ThicknessPairs(prepared, config.input, config.on_bad_map, maps=maps)
    splits = prepared.manifest.frame["split"].astype(str).to_numpy()
    train_rows, val_rows, test_rows = (np.flatnonzero(splits == s) for s in ("train", "val", "test"))
    if len(train_rows) == 0:
        raise DataError("no training pairs (no row with split 'train')", path=prepared.manifest.name)
    name = config.method.get("name", "cross-modal")
    method, initial = seeded_method(config.model, config.method, name, config.seed)
    encoder = initial.encoder
    if encoder.in_channels != preprocess.channels:
        raise ConfigError(f"the encoder takes {encoder.in_channels} channels but the input "
                          f"{config.input!r} has {preprocess.channels}; set model.kwargs.in_channels")
    mean_map = _mean_map(dataset, train_rows)
    if hasattr(method, "start_from"):
        method.start_from(float(mean_map.mean()), torch.from_numpy(mean_map))
    log.info("cross-modal pretraining: %d train / %d val / %d test pairs (%s input, %s maps; %d maps "
             "fail the quality check and are masked)", len(train_rows), len(val_rows), len(test_rows),
             config.input, config.maps, len(dataset.failed))
    result = fit(method, torch.utils.data.Subset(dataset, train_rows.tolist()), config=config.engine,
                 run=run, seed=config.seed, resume=resume,
                 val=torch.utils.data.Subset(dataset, val_rows.tolist()) if len(val_rows) else None)
    method.eval()
    save_encoder(run.encoder_dir, method.encoder, arch=initial.arch, kwargs=initial.kwargs,
                 preprocess=preprocess.model_dump(), method=name,
                 config=config.model_dump(mode="json"),
                 data_fingerprint=prepared.manifest.subset(train_rows).fingerprint(),
                 extra={"input": config.input, "maps": config.maps, "pairs": len(train_rows),
                        "precision": result.precision})
    # the whole regressor (encoder, decoder, mean-map prior), for `retinassl predict`
    save_model(run.path / "regressor", "cross-modal", module_state(method), {
        **encoder_meta(method.encoder, arch=initial.arch, kwargs=initial.kwargs,
                       preprocess=preprocess.model_dump(mode="json"), method=name,
                       config=config.model_dump(mode="json")),
        "cross_modal": method.config.model_dump(mode="json"), "input": config.input, "precision": result.precision})
    metrics: dict[str, float] = {"train_seconds": result.seconds, "train_batches": float(result.batches),
                                 "maps_failing_quality": float(len(dataset.failed))}
    eval_rows = test_rows if len(test_rows) else val_rows
    if len(eval_rows):
        pred = predict_maps(method, dataset, eval_rows)
        target, mask = dataset.targets[eval_rows], dataset.masks[eval_rows]
        metrics.update(regression_errors(pred, target, mask))
        baseline = np.broadcast_to(mean_map, pred.shape)
        metrics["baseline_mae_um"] = regression_errors(baseline, target, mask)["mae_um"]
        deviant = (mask > 0) & (np.abs(target - baseline) > config.deviant_um)
        metrics.update({f"{k}_deviant": v for k, v in regression_errors(pred, target, deviant).items()})
        metrics["baseline_mae_um_deviant"] = regression_errors(baseline, target, deviant)["mae_um"]
        if maps is not None and "thickness_map" in prepared.manifest.frame.columns:
            truth = ThicknessPairs(prepared, config.input, "mask")
            t_target, t_mask = truth.targets[eval_rows], truth.masks[eval_rows] * (mask > 0)
            metrics.update({f"{k}_vs_manifest": v for k, v in
                            regression_errors(pred, t_target, t_mask).items() if k != "pixels"})
            metrics["target_mae_um_vs_manifest"] = regression_errors(target, t_target, t_mask)["mae_um"]
        _figures(run, dataset, eval_rows, pred, config.predictions)
    append_results(run.results_file, [
        result_row(experiment=config.name, task="thickness-regression", method=name,
                   init=initial.kind,
                   protocol="test", n_labelled=0, seed=config.seed, metric=k, value=v)
        for k, v in metrics.items()])
    return metrics


def _figures(run: RunDir, dataset: ThicknessPairs, rows: np.ndarray, pred: np.ndarray, count: int) -> None:
    """Input, target and prediction of the first ``count`` evaluated pairs."""
    if count == 0:
        return
    from retinassl.figures.plots import plt, save_figure

    frame = dataset.prepared.manifest.frame
    for k, r in enumerate(rows[:count]):
        entry = dataset.prepared.entries[int(r)]
        image = np.asarray(entry.image())
        m = dataset.masks[r] > 0
        t = np.where(m, dataset.targets[r], np.nan)
        p = np.where(m, pred[k], np.nan)
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
        axes[0].imshow(image if image.ndim == 3 and image.shape[2] == 3 else image.squeeze(), cmap="gray")
        axes[0].set_title("input", fontsize=8)
        for ax, data, title in ((axes[1], t, "OCT thickness (target)"), (axes[2], p, "predicted")):
            ax.imshow(image if image.ndim == 3 and image.shape[2] == 3 else image.squeeze(), cmap="gray")
            im = ax.imshow(np.ma.masked_invalid(data), cmap="jet", vmin=150, vmax=500, alpha=0.8)
            ax.set_title(title, fontsize=8)
        for ax in axes:
            ax.set_axis_off()
        fig.colorbar(im, ax=axes, fraction=0.02, label="µm")
        # the id is often the photograph's file stem, i.e. possibly the patient's name
        label = private_label(str(frame.at[int(r), "id"]), "eye")
        save_figure(fig, run.report_dir / "figures" / f"crossmodal-{label}.png")

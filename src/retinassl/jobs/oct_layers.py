"""Train and evaluate a layer-segmentation model (``retinassl oct train-seg``).

Data: annotated volumes (any reader's output with layer boundaries: HEYEX XML exports with their
segmentation, stacks whose sidecar gives boundary rows, region masks or annotation polylines -- see
:mod:`retinassl.oct.stack` -- and synthetic volumes), split by volume into training and validation
B-scans. The model folder lands in ``<run>/layer-model``; validation metrics (region Dice,
boundary error in micrometres) go to the run's results table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from retinassl.config import EngineConfig, ModelConfig, Section, to_yaml
from retinassl.engine.fit import fit
from retinassl.errors import DataError
from retinassl.methods.base import build_method
from retinassl.models import build_encoder
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.oct.layers import boundaries_to_labels
from retinassl.methods.oct_layers import BScanDataset, LayerModel, training_bscans
from retinassl.oct.volume import OCTVolume

log = logging.getLogger(__name__)


class SyntheticOCTData(Section):
    """Synthetic annotated volumes (exact boundaries).

    Attributes:
        n_volumes: volumes to render; seed: their seed; shape: ``(n_bscans, depth, width)``.
    """

    n_volumes: int = Field(24, ge=2)
    seed: int = 0
    shape: tuple[int, int, int] = (49, 496, 512)


class LayerTrainConfig(Section):
    """A layer-segmentation training run.

    Attributes:
        name, seed, runs_dir: the run.
        input_size: ``(rows, columns)`` B-scans are resized to.
        max_bscans: train on at most this many B-scans (DeepRT: 1,009), drawn at random.
        val_fraction: fraction of the volumes held out for validation.
        volumes: annotated volume files (any format :func:`retinassl.oct.read.read_volume` reads).
        synthetic: synthetic volumes instead (used when ``volumes`` is empty).
        model: the encoder (``unet`` with one input channel by default).
        method: ``oct-layers`` settings (boundaries, lr, ...).
        engine: training settings.
    """

    name: str = "oct-layers"
    seed: int = 0
    runs_dir: Path = Path("runs")
    input_size: tuple[int, int] = (128, 128)
    max_bscans: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    volumes: list[Path] = Field(default_factory=list)
    synthetic: SyntheticOCTData = SyntheticOCTData()
    model: ModelConfig = ModelConfig(arch="unet", kwargs={"in_channels": 1,
                                                          "channels": [16, 32, 64, 128]})
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "oct-layers"})
    engine: EngineConfig = EngineConfig(max_epochs=8, batch_size=16, checkpoint_every_n_steps=200)


def recorded_config(config: LayerTrainConfig) -> LayerTrainConfig:
    """The config as the run records it (``config.yaml``, the report): the volume files by salted
    label (``<vol-...>``), never by path -- exports are often named after the patient."""
    from retinassl.oct.identity import private_label

    labels = [Path("<" + private_label(str(p), "vol") + ">") for p in config.volumes]
    return config.model_copy(update={"volumes": labels})


def load_training_volumes(config: LayerTrainConfig) -> list[OCTVolume]:
    """The annotated volumes of a config (files, or synthetic)."""
    if config.volumes:
        from retinassl.errors import ConfigError
        from retinassl.oct.read import read_volume

        if any(str(p).startswith("<vol-") for p in config.volumes):
            raise ConfigError("the run records its volume files by label, not by path (they may "
                              "carry the patient's name): give them again, e.g. --resume RUN "
                              "volumes=[a.dcm,b.dcm]")

        return [read_volume(p) for p in config.volumes]
    from retinassl.oct.synthetic import synthetic_volumes

    s = config.synthetic
    return synthetic_volumes(s.n_volumes, s.seed, tuple(s.shape))  # type: ignore[return-value]


def evaluate_layers(model: LayerModel, volumes: Sequence[OCTVolume],
                    truth_layers: Sequence[dict[str, np.ndarray]] | None = None) -> dict[str, float]:
    """Segmentation accuracy on annotated volumes, in each volume's own B-scan grid.

    Returns:
        ``dice_<region>`` for the regions between consecutive boundaries and their mean
        ``dice_layers``; ``boundary_error_um_<name>`` (mean absolute error in micrometres over
        A-scans where both are defined) and their mean ``boundary_error_um``; ``undefined_fraction``
        of predicted A-scans; ``bscans``.
    """
    names = model.boundaries
    k = len(names)
    inter = np.zeros(k + 1)
    total = np.zeros(k + 1)
    err_sum = np.zeros(k)
    err_n = np.zeros(k)
    undefined = 0
    ascans = 0
    bscans = 0
    for v_idx, volume in enumerate(volumes):
        truth = truth_layers[v_idx] if truth_layers is not None else volume.layers
        pred = model.segment(volume)
        axial_um = volume.spacing_mm[1] * 1000.0
        n, depth, _ = volume.shape
        for i in range(n):
            t = np.stack([truth[name][i] for name in names])
            p = np.stack([pred[name][i] for name in names])
            both = np.isfinite(t) & np.isfinite(p)
            err_sum += np.where(both, np.abs(p - t), 0).sum(axis=1) * axial_um
            err_n += both.sum(axis=1)
            undefined += int((~np.isfinite(p)).any(axis=0).sum())
            ascans += p.shape[1]
            lt = boundaries_to_labels(np.where(np.isfinite(t), t, np.nan), depth)
            lp = boundaries_to_labels(np.where(np.isfinite(p), p, np.nan), depth)
            ok = (lt >= 0) & (lp >= 0)
            for c in range(k + 1):
                a, b = (lt == c) & ok, (lp == c) & ok
                inter[c] += (a & b).sum()
                total[c] += a.sum() + b.sum()
            bscans += 1
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)
    out: dict[str, float] = {}
    for c in range(1, k):
        out[f"dice_{names[c - 1]}-{names[c]}"] = float(dice[c])
    inner = dice[1:k]
    out["dice_layers"] = float(np.nanmean(inner)) if np.isfinite(inner).any() else float("nan")
    errors = np.where(err_n > 0, err_sum / np.maximum(err_n, 1), np.nan)
    for j, name in enumerate(names):
        out[f"boundary_error_um_{name}"] = float(errors[j])
    out["boundary_error_um"] = float(np.mean(errors))
    out["undefined_fraction"] = undefined / max(ascans, 1)
    out["bscans"] = float(bscans)
    return out


def undefined_warning(metrics: dict[str, float]) -> str | None:
    """A warning when the validation metrics are all undefined (NaN): the model found no boundary
    on any validation A-scan (typically too short a training), so Dice and boundary error could not
    be measured. None when they are defined."""
    keys = [k for k in metrics if k.startswith(("dice_", "boundary_error_um"))]
    if keys and not any(np.isfinite(metrics[k]) for k in keys):
        return (f"the layer model found no boundary on any validation A-scan (undefined fraction "
                f"{metrics.get('undefined_fraction', float('nan')):.0%}): Dice and boundary error are "
                f"undefined (NaN); train longer (engine.max_epochs / engine.max_steps) or check the "
                f"volumes' annotations before using this model")
    return None


def split_volumes(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Volume indices for training and validation (at least one each when ``n >= 2``)."""
    order = np.random.default_rng([seed, 17]).permutation(n)
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def run_train_layers(config: LayerTrainConfig, run: RunDir,
                     volumes: Sequence[OCTVolume] | None = None,
                     resume: bool = False) -> tuple[LayerModel, dict[str, float]]:
    """Train a layer-segmentation model; returns it and its validation metrics."""
    run.write_config(to_yaml(recorded_config(config)))
    volumes = list(volumes) if volumes is not None else load_training_volumes(config)
    if len(volumes) < 2:
        raise DataError(f"need at least 2 annotated volumes (one for validation), got {len(volumes)}")
    params = dict(config.method)
    name = params.pop("name", "oct-layers")
    with torch.random.fork_rng(devices=[]):  # layer initialisation draws from the global RNG
        torch.manual_seed(config.seed)
        encoder = build_encoder(config.model.arch, **config.model.kwargs)
        method = build_method(name, params, encoder)
    boundaries = tuple(method.config.boundaries)
    train_idx, val_idx = split_volumes(len(volumes), config.val_fraction, config.seed)
    images, rows = training_bscans([volumes[i] for i in train_idx], boundaries, config.max_bscans,
                                   config.seed)
    val_images, val_rows = training_bscans([volumes[i] for i in val_idx], boundaries)
    if not images:
        raise DataError("no annotated B-scans to train on")
    size = tuple(config.input_size)
    train_set = BScanDataset(images, rows, size)
    val_set = BScanDataset(val_images, val_rows, size)
    log.info("layer segmentation: %d training B-scans from %d volumes, %d validation B-scans, "
             "boundaries %s, input %s", len(train_set), len(train_idx), len(val_set), boundaries, size)
    result = fit(method, train_set, config=config.engine, run=run, seed=config.seed,
                 val=val_set if len(val_set) else None, resume=resume)
    method.eval()
    model = LayerModel(method.network(), boundaries, size, config.model.arch,
                       dict(config.model.kwargs), method.config.decoder_channels)
    model.save(run.path / "layer-model", extra={"train_bscans": len(train_set),
                                                "train_volumes": len(train_idx), "precision": result.precision})
    metrics = evaluate_layers(model, [volumes[i] for i in val_idx])
    undefined = undefined_warning(metrics)
    if undefined:
        log.warning("%s", undefined)
        run.update_status(warnings=[undefined])
    metrics["train_seconds"] = result.seconds
    metrics["train_bscans"] = float(len(train_set))
    append_results(run.results_file, [
        result_row(experiment=config.name, task="oct-layers", method=name, init="scratch",
                   protocol="validation", n_labelled=len(train_set), seed=config.seed, metric=k,
                   value=v) for k, v in metrics.items()])
    return model, metrics

"""``retinassl semisup train | evaluate | heatmap``: one patch-classifier run (an SSL-GAN or a
supervised baseline) on a labelled subset, its test evaluation, and heatmaps of new images.

A run directory holds ``config.yaml`` (:class:`~retinassl.jobs.patch_config.SemisupTrainConfig`),
``classifier/`` (the patch classifier: encoder checkpoint + ``head.safetensors``),
``predictions/<name>-test.csv`` (per-image score and patch logits), ``results.csv`` and
``report/figures/heatmap-*.png``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from retinassl.atomic import write_text
from retinassl.config import load_config, to_yaml
from retinassl.data.cache import Cache
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
from retinassl.errors import RunDirError
from retinassl.figures.heatmap import overlay, save_png
from retinassl.io.results import append_results, read_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.models.initialize import check_encoder_inputs, init_label
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.jobs.patch_config import SemisupTrainConfig
from retinassl.jobs.patch_evaluation import bank_image_scores, evaluate_bank, predict_bank, write_heatmaps
from retinassl.data.patch_bank import build_patch_bank
from retinassl.jobs.patch_data import PatchData, load_patch_data
from retinassl.jobs.patch_training import save_learner, train_learner, training_info

log = logging.getLogger(__name__)

CLASSIFIER = "classifier"


def _data(config: SemisupTrainConfig) -> PatchData:
    return load_patch_data(config.data, config.preprocess, config.split, config.patches, config.pool)


def run_semisup_train(config: SemisupTrainConfig, run: RunDir, resume: bool = False,
                      write_config: bool = True, data: PatchData | None = None) -> dict[str, float]:
    """Train the configured learner on ``n_labelled`` images, save its classifier, evaluate it.

    Args:
        config: the run's configuration.
        run: the run directory (``resume``: continue its last training checkpoint).
        write_config: record the config as the run's ``config.yaml`` (the demo, which shares a run
            directory between stages, does not).
        data: already loaded data (else loaded from the config).

    Returns:
        Test metrics (``patch_auc``, ``image_auc``, ``localisation_auc``) and training time.
    """
    check_encoder_inputs(config)
    if write_config:
        run.write_config(to_yaml(config))
    data = data if data is not None else _data(config)
    n = len(data.train) if config.n_labelled is None else min(config.n_labelled, len(data.train))
    labelled = data.labelled_subsets([n], config.seed)[n]
    trained = train_learner(config.learner, data, labelled, config.seed, run, resume=resume,
                            use_pool=config.pool is not None)
    save_learner(trained, data, labelled, run.path / CLASSIFIER, method=config.learner.method_name,
                 preprocess=config.preprocess.model_dump(), config=config.model_dump(mode="json"))
    info = {**training_info(trained), "n_labelled": float(n)}
    write_text(run.path / f"{config.name}-train.json", json.dumps(info))
    metrics = evaluate_run(config, run, trained.classifier, data)
    return {**metrics, **{k: v for k, v in info.items() if k != "n_labelled"}}


def evaluate_run(config: SemisupTrainConfig, run: RunDir, classifier: PatchClassifier | None = None,
                 data: PatchData | None = None) -> dict[str, float]:
    """Test metrics of a run's classifier; writes predictions and heatmaps, and appends the
    metrics to the results table unless it already holds them."""
    if classifier is None:
        classifier, _ = PatchClassifier.load(run.path / CLASSIFIER)
    data = data if data is not None else _data(config)
    bank = data.bank("test", classifier.patch_size, 0)
    metrics, predictions = evaluate_bank(classifier, bank, data.prepared, data.labels(data.test),
                                         data.ids(data.test))
    write_text(run.predictions / f"{config.name}-test.csv", predictions.to_csv(index=False))
    if config.heatmaps:
        order = predictions.sort_values("score", ascending=False)
        chosen = (order[order["label"] == 1].index[: (config.heatmaps + 1) // 2].tolist()
                  + order[order["label"] == 0].index[: config.heatmaps // 2].tolist())
        write_heatmaps(data.prepared, data.test[chosen], predictions.loc[chosen].reset_index(drop=True),
                       run.report_dir / "figures", f"heatmap-{config.name}-")
    n = len(data.train) if config.n_labelled is None else min(config.n_labelled, len(data.train))
    done = run.results_file.is_file() and not read_results(run.results_file).query(
        "experiment == @config.name and seed == @config.seed and metric == 'image_auc'").empty
    if not done:
        protocol = "semi-supervised" if config.learner.method_name == "ssl-gan" else "supervised"
        append_results(run.results_file, [
            result_row(experiment=config.name, task="patch:abnormal", method=config.learner.method_name,
                       init=init_label(config.learner.model.init),
                       protocol=protocol, fraction=n / len(data.train), n_labelled=n,
                       seed=config.seed, metric=k, value=v) for k, v in metrics.items()])
    log.info("test: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def load_run_config(run_dir: str | Path) -> tuple[RunDir, SemisupTrainConfig]:
    """A ``semisup train`` run directory and its configuration."""
    run = RunDir(Path(run_dir))
    if not run.config_file.is_file() or not (run.path / CLASSIFIER).is_dir():
        raise RunDirError(f"{run_dir} is not a finished `retinassl semisup train` run (it needs "
                          f"config.yaml and {CLASSIFIER}/)")
    return run, load_config(SemisupTrainConfig, run.config_file)


def heatmap_image(image: str | Path, checkpoint: str | Path, out: str | Path | None = None,
                  mask: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> tuple[Path, np.ndarray, float]:
    """Patch heatmap of one fundus image with a saved patch classifier.

    Args:
        image: the image file.
        checkpoint: a run directory (its ``classifier/``) or a classifier directory.
        out: the PNG to write (default: ``runs/heatmaps/<image stem>-heatmap.png`` under the
            working directory: never beside the input data).
        mask: optional lesion mask image (outlined in the overlay), anywhere (IDRiD keeps its
            ground truth in a sibling folder of the images).
        cache_dir: preprocessed-image cache (default: the toolkit's).

    Returns:
        The PNG's path, the ``(grid, grid)`` patch probabilities and the image score (the
        classifier's rule).
    """
    checkpoint = Path(checkpoint)
    directory = checkpoint / CLASSIFIER if (checkpoint / CLASSIFIER).is_dir() else checkpoint
    classifier, meta = PatchClassifier.load(directory)
    preprocess = PreprocessConfig(**(meta.get("preprocess") or {}))
    image = Path(image).resolve()
    # the manifest's root holds both files (paths must not escape it): their common folder
    root = Path(os.path.commonpath([image.parent, Path(mask).resolve().parent])) if mask is not None \
        else image.parent
    record = {"id": re.sub(r"[^A-Za-z0-9._-]", "_", image.stem) or "image",
              "image": image.relative_to(root).as_posix()}
    if mask is not None:
        if not Path(mask).is_file():
            from retinassl.errors import DataError

            raise DataError("mask file does not exist", path=mask)
        record["mask_EX"] = Path(mask).resolve().relative_to(root).as_posix()
    manifest = Manifest.from_records([record], root=root, name=str(image))
    prepared = Cache(cache_dir).prepare(manifest, preprocess)
    bank = build_patch_bank(prepared, [0], classifier.grid, classifier.patch_size, 0, labelled=False)
    logits = predict_bank(classifier, bank)
    score = float(bank_image_scores(classifier, bank, logits)[0])
    probs = 1 / (1 + np.exp(-logits[0].reshape(classifier.grid, classifier.grid)))
    entry = prepared.entries[0]
    lesion = entry.mask("mask_EX") if mask is not None else None
    art = overlay(np.asarray(entry.image()), probs, mask=None if lesion is None else np.asarray(lesion))
    out = Path(out) if out is not None else Path("runs") / "heatmaps" / f"{image.stem}-heatmap.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_png(out, art), probs, score

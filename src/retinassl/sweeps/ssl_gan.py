"""The packaged experiment ``idrid-ssl-gan`` (``kind: ssl-gan``): SSL-GAN vs ConvNet vs ResNet34
at 10/20/40/80/149 labelled images x 5 samplings on one stratified 149/50/50 split, plus the
extension with an enlarged unlabelled pool.

Run by ``retinassl sweep idrid-ssl-gan --budget smoke|cpu|full``. The preset's ``budgets``
section holds each budget's overrides (widths, steps, image size...), merged into the preset
before it is validated; the resolved configuration is the run's ``config.yaml``.

Every (learner, labelled count, seed) *cell* trains in ``cells/<cell>/`` and, once evaluated,
appends its rows (``patch_auc``, ``image_auc``, ``localisation_auc``, ``train_seconds``,
``train_steps``) to the run's results table in one atomic write and its per-image predictions to
``predictions/ssl-gan/<cell>.csv``. The sweep is resumable at any point: a cell with rows in the
results table is skipped; a cell whose classifier was saved is only evaluated; a cell with a
training checkpoint resumes from it (exactly, see :mod:`retinassl.engine.fit`). When both cells of a
comparison exist, the paired DeLong test of their test-image scores is appended
(:mod:`retinassl.metrics.ssl_gan_summary`). With ``evaluate_on``, every cell's classifier also
scores each external dataset (task ``patch:abnormal@<name>``, :mod:`retinassl.sweeps.ssl_gan_external`),
and the DeLong tests run on each external set too.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import file_lock, write_text
from retinassl.config import to_yaml, validate
from retinassl.errors import ConfigError, TrainingDiverged
from retinassl.metrics.stats import delong_test
from retinassl.io.results import append_results, read_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import is_saved_model
from retinassl.sweeps.external import ExternalSet, external_task, warn_overlap
from retinassl.sweeps.grid import Grid, data_settings, merge_budget, run_grid
from retinassl.sweeps.ssl_gan_external import (check_evaluate_on, prediction_folder, prepare_externals,
                                              score_external, scored_cells)
from retinassl.metrics.anatomy import TEST_PATCH_LABELS
from retinassl.models.initialize import check_encoder_inputs, init_label
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.jobs.patch_config import LearnerConfig, SSLGANExperimentConfig
from retinassl.jobs.patch_evaluation import evaluate_bank, write_heatmaps
from retinassl.jobs.patch_data import PatchData, load_patch_data
from retinassl.metrics.ssl_gan_summary import plan
from retinassl.metrics.tasks import TaskSpec
from retinassl.data.cache import Cache
from retinassl.jobs.patch_training import save_learner, train_learner, training_info

log = logging.getLogger(__name__)

TASK = "patch:abnormal"
CELL_METRICS = ("patch_auc", "image_auc", "localisation_auc")
PREDICTIONS = "ssl-gan"          # predictions/<this>/ (kept apart from the generic ROC section)
GALLERY_PREFIX = "sslgan-heatmap-"


def resolve_config(data: dict[str, Any], budget: str) -> SSLGANExperimentConfig:
    """Merge the preset's ``budgets[budget]`` overrides into it (:func:`~retinassl.sweeps.grid.merge_budget`)
    and validate."""
    data = dict(data)
    budgets = data.pop("budgets", {}) or {}
    if budget not in budgets:
        raise ConfigError(f"the experiment defines no {budget!r} budget (it has: "
                          f"{', '.join(budgets) or 'none'})")
    merged = merge_budget(data, budgets[budget] or {})
    merged["budget"] = budget
    config = validate(SSLGANExperimentConfig, merged, origin=f"experiment {data.get('name')} ({budget})")
    check_evaluate_on(config.evaluate_on, TASK)
    return config


def cell_name(label: str, n_labelled: int, seed: int) -> str:
    return f"{label}-n{n_labelled:03d}-s{seed}"


def parse_cell_name(name: str) -> tuple[str, int, int]:
    """``(label, n_labelled, seed)`` of a cell's name (the inverse of :func:`cell_name`)."""
    match = re.fullmatch(r"(.+)-n(\d+)-s(\d+)", name)
    if match is None:
        raise ValueError(f"{name!r} is not an SSL-GAN sweep cell's name (<label>-n<labelled>-s<seed>)")
    return match.group(1), int(match.group(2)), int(match.group(3))


def predictions_path(run: RunDir, label: str, n_labelled: int, seed: int) -> Path:
    return run.path / "predictions" / PREDICTIONS / f"{cell_name(label, n_labelled, seed)}.csv"


def _done(run: RunDir, metric: str, task: str = TASK) -> set[tuple[str, int, int]]:
    """``(method, n_labelled, seed)`` of the rows of ``metric`` of ``task`` already in the results table."""
    if not run.results_file.is_file():
        return set()
    table = read_results(run.results_file)
    table = table[(table["metric"] == metric) & (table["task"] == task)]
    return {(str(m), int(n), int(s)) for m, n, s in zip(table["method"], table["n_labelled"], table["seed"])}


def plan_cells(config: SSLGANExperimentConfig) -> list[tuple[str, str, int, int, bool]]:
    """``(label, learner, n_labelled, seed, use_pool)`` of every cell (see :func:`.summary.plan`)."""
    return plan(config.model_dump(mode="json"))


class SSLGANGrid(Grid):
    """The cells of the experiment: one (learner, labelled count, seed) each."""

    key = ("method", "n_labelled", "seed")

    def __init__(self, data: dict[str, Any], budget: str, run: RunDir) -> None:
        super().__init__(run)
        self.config = resolve_config(data, budget)
        self._data: PatchData | None = None
        self._externals: list[ExternalSet] | None = None

    def settings(self) -> dict[str, Any]:
        """What the done cells depend on beyond (learner, labelled count, seed): the data (its source
        and options, not where its folder is), preprocessing, split, patches, each learner's recipe and
        the unlabelled extension. More counts, seeds or learners only add cells."""
        config = self.config
        learners = {name: {**learner.model_dump(mode="json", exclude={"engine", "keep_weights"}),
                           "engine": learner.engine.result_settings()}
                    for name, learner in config.learners.items()}
        extension = {**config.extension.model_dump(mode="json"), "pool": data_settings(config.extension.pool)}
        return {"data": data_settings(config.data), "learners": learners, "extension": extension,
                **config.model_dump(mode="json", include={"preprocess", "split", "patches"})}

    def setting_defaults(self) -> dict[str, Any]:
        """Each learner's method at its ``Config``'s defaults: a recorded ``method`` holds only the keys
        the preset and overrides set, so a key given on a resume that the record lacks (e.g.
        ``select_metric``) is accepted only at its default, the value the done cells ran with."""
        from retinassl.methods.base import method_class

        return {"learners": {name: {"method": method_class(learner.method_name).Config().model_dump(mode="json")}
                             for name, learner in self.config.learners.items()}}

    @property
    def externals(self) -> list[ExternalSet]:
        """The prepared ``evaluate_on`` datasets (:mod:`~retinassl.sweeps.ssl_gan_external`)."""
        if self._externals is None:
            self._externals = prepare_externals(self.config, TASK, self.run)
        return self._externals

    @property
    def patch_data(self) -> PatchData:
        if self._data is None:
            self._data = _load(self.config)
        return self._data

    def prepare(self) -> None:
        check_encoder_inputs(self.config)  # the learners it trains start from encoders of these inputs
        self.run.write_config(to_yaml(self.config))
        _write_split(self.run, self.patch_data)
        _write_test_patch_labels(self.run, self.patch_data,
                                 min(learner.patch_size for learner in self.config.learners.values()))
        others = {"labelled": self.patch_data.prepared.manifest}  # external copies of these: warned
        if self.patch_data.pool is not None:
            others["pool"] = self.patch_data.pool.manifest
        for external in self.externals:
            warn_overlap(external, others, Cache(self.config.data.cache_dir), self.run)

    def cells(self) -> list[dict[str, Any]]:
        return [{"method": label, "learner": learner, "n_labelled": n, "seed": seed, "use_pool": use_pool}
                for label, learner, n, seed, use_pool in plan_cells(self.config)]

    def cell_name(self, cell: Mapping[str, Any]) -> str:
        return cell_name(cell["method"], cell["n_labelled"], cell["seed"])

    def done_rows(self, results: pd.DataFrame) -> pd.DataFrame:
        return results[results["metric"] == "image_auc"]

    def run_cell(self, cell: Mapping[str, Any]) -> None:
        config, data = self.config, self.patch_data
        try:
            external = {"externals": self.externals} if config.evaluate_on else {}
            run_cell(config, config.learners[cell["learner"]], data, self.run, cell["method"],
                     cell["n_labelled"], cell["seed"], cell["use_pool"], **external)
        except TrainingDiverged as exc:
            _record_divergence(config, self.run, cell["method"], config.learners[cell["learner"]],
                               cell["n_labelled"], cell["seed"], len(data.train), str(exc))

    def after_cell(self, cell: Mapping[str, Any]) -> None:
        append_comparisons(self.config, self.run, self.patch_data)

    def finish(self) -> None:
        self.score_done_cells()
        append_comparisons(self.config, self.run, self.patch_data)

    def score_done_cells(self) -> None:
        """External rows of cells done before ``evaluate_on`` was given (a resumed sweep): scored
        with the cell's kept classifier, or named in the log when its weights were not kept."""
        done = self.done_rows(read_results(self.run.results_file)) if self.run.results_file.is_file() else None
        if done is None or not self.externals:
            return
        finished = {(str(m), int(n), int(s)) for m, n, s, v in
                    zip(done["method"], done["n_labelled"], done["seed"], done["value"]) if np.isfinite(v)}
        for external in self.externals:
            scored, lost = scored_cells(self.run, external), []
            for cell in self.cells():
                key = (cell["method"], cell["n_labelled"], cell["seed"])
                if key not in finished or key in scored:
                    continue
                directory = self.run.path / "cells" / self.cell_name(cell) / "classifier"
                if not is_saved_model(directory):
                    lost.append(self.cell_name(cell))
                    continue
                classifier, _ = PatchClassifier.load(directory)
                template = _row(self.config, cell["method"], self.config.learners[cell["learner"]],
                                cell["n_labelled"], cell["seed"], len(self.patch_data.train), "image_auc", 0.0)
                append_results(self.run.results_file,
                               score_external(classifier, external, self.run, self.cell_name(cell), template))
            if lost:
                log.warning("evaluate_on %s: %d cell(s) were done before it was given and kept no weights "
                            "(keep_weights: false, or a run restored from an archive), so they have no "
                            "external rows: %s", external.spec.name,
                            len(lost), ", ".join(lost))


def run_ssl_gan_experiment(data: dict[str, Any], run: RunDir, budget: str, resume: bool) -> None:
    """The ``ssl-gan`` experiment runner for ``retinassl sweep`` (see the module docstring)."""
    if resume and run.config_file.is_file():
        from retinassl.config import read_yaml

        started = read_yaml(run.config_file).get("budget")  # bounded: refuses alias bombs
        if started and started != budget:
            raise ConfigError(f"{run.path} was started with --budget {started}; resume it with the "
                              f"same budget")
    workers = resolve_config(data, budget).workers
    run_grid(SSLGANGrid, (data, budget), run, workers=workers, name="ssl-gan")


def _load(config: SSLGANExperimentConfig) -> PatchData:
    pool = config.extension.pool if config.extension.enabled else None
    return load_patch_data(config.data, config.preprocess, config.split, config.patches, pool)


def _record_divergence(config: SSLGANExperimentConfig, run: RunDir, label: str, learner: LearnerConfig,
                       n_labelled: int, seed: int, n_train: int, message: str) -> None:
    """A cell whose training diverged (NaN loss, collapsed generator) is reported, not retried:
    NaN metrics and ``diverged = 1`` in the results table, the message in the log and in
    ``cells/<cell>/diverged.txt`` (summaries then count one sampling fewer)."""
    log.error("cell %s diverged: %s", cell_name(label, n_labelled, seed), message)
    write_text(run.path / "cells" / cell_name(label, n_labelled, seed) / "diverged.txt", message + "\n")
    rows = [_row(config, label, learner, n_labelled, seed, n_train, metric, value)
            for metric, value in [*((m, float("nan")) for m in CELL_METRICS), ("diverged", 1.0)]]
    append_results(run.results_file, rows)


def _write_split(run: RunDir, data: PatchData) -> None:
    frame = data.prepared.manifest.frame
    split = pd.Series("", index=range(len(frame)))
    for name in ("train", "val", "test"):
        split.iloc[getattr(data, name)] = name
    table = pd.DataFrame({"id": frame["id"].to_numpy(), "abnormal": data.labels(np.arange(len(frame))),
                          "split": split.to_numpy()})
    write_text(run.path / "split.csv", table.to_csv(index=False))
    if data.pool is not None:
        write_text(run.path / "pool.csv", pd.DataFrame({"id": data.pool.manifest.ids}).to_csv(index=False))


def test_patch_labels(data: PatchData, patch_size: int) -> pd.DataFrame:
    """``id, patch_00 ..``: each test image's patch labels (what :mod:`.anatomy` reads)."""
    bank = data.bank("test", patch_size)
    table = pd.DataFrame(bank.image_labels(), columns=[f"patch_{j:02d}" for j in range(bank.per_image)])
    table.insert(0, "id", data.ids(data.test))
    return table


def _write_test_patch_labels(run: RunDir, data: PatchData, patch_size: int) -> None:
    write_text(run.path / TEST_PATCH_LABELS, test_patch_labels(data, patch_size).to_csv(index=False))


def _row(config: SSLGANExperimentConfig, label: str, learner: LearnerConfig, n_labelled: int, seed: int,
         n_train: int, metric: str, value: float) -> dict:
    protocol = "semi-supervised" if learner.method_name == "ssl-gan" else "supervised"
    return result_row(experiment=config.name, task=TASK, method=label, init=init_label(learner.model.init),
                      protocol=protocol, fraction=n_labelled / n_train, n_labelled=n_labelled, seed=seed,
                      metric=metric, value=value)


def run_cell(config: SSLGANExperimentConfig, learner: LearnerConfig, data: PatchData, run: RunDir,
             label: str, n_labelled: int, seed: int, use_pool: bool,
             externals: Sequence[ExternalSet] = ()) -> dict[str, float]:
    """Train (or resume, or reuse) and evaluate one cell; append its results (and, per external
    set, its external rows: :func:`~retinassl.sweeps.ssl_gan_external.score_external`)."""
    name = cell_name(label, n_labelled, seed)
    cell = RunDir(run.path / "cells" / name)
    cell.path.mkdir(parents=True, exist_ok=True)
    classifier_dir = cell.path / "classifier"
    info_file = cell.path / "train.json"
    subsets = data.labelled_subsets(config.labelled, seed)
    labelled = subsets[min(n_labelled, len(data.train))]
    if is_saved_model(classifier_dir) and info_file.is_file():
        classifier, _ = PatchClassifier.load(classifier_dir)
        info = json.loads(info_file.read_text())
    else:
        resume = (cell.path / "checkpoints").is_dir() and any((cell.path / "checkpoints").glob("step-*.json"))
        if not (cell.path / "run.json").is_file():
            cell.update_status(status="running", name=name)
        trained = train_learner(learner, data, labelled, seed, cell, resume=resume, use_pool=use_pool)
        classifier = trained.classifier
        info = training_info(trained)
        save_learner(trained, data, labelled, classifier_dir, method=learner.method_name,
                     preprocess=config.preprocess.model_dump(),
                     config={"learner": learner.model_dump(mode="json"), "n_labelled": n_labelled,
                             "seed": seed, "unlabelled_pool": use_pool})
        write_text(info_file, json.dumps(info))
        shutil.rmtree(cell.path / "checkpoints", ignore_errors=True)
    test_bank = data.bank("test", learner.patch_size, 0)
    metrics, predictions = evaluate_bank(classifier, test_bank, data.prepared,
                                         data.labels(data.test), data.ids(data.test))
    write_text(predictions_path(run, label, n_labelled, seed), predictions.to_csv(index=False))
    gallery = config.gallery
    if gallery.images and n_labelled == gallery.n_labelled and seed == gallery.seed:
        _gallery(run, data, predictions, label, gallery.images)
    metrics.update(info)
    rows = [_row(config, label, learner, n_labelled, seed, len(data.train), k, v) for k, v in metrics.items()]
    for external in externals:  # appended with the cell's rows: done together or not at all
        rows += score_external(classifier, external, run, name, rows[0])
    append_results(run.results_file, rows)
    if not learner.keep_weights:
        shutil.rmtree(classifier_dir, ignore_errors=True)
    log.info("%s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def _gallery(run: RunDir, data: PatchData, predictions: pd.DataFrame, label: str, images: int) -> None:
    """Heatmaps of the same test images for every learner: the highest- and lowest-scoring
    diseased images and the highest-scoring healthy ones (chosen by the first learner's scores and
    then kept, so every learner shows the same images)."""
    choice_file = run.path / "gallery.json"
    if choice_file.is_file():
        chosen = json.loads(choice_file.read_text())
    else:
        order = predictions.sort_values("score", ascending=False)
        diseased = order[order["label"] == 1]["id"].tolist()
        healthy = order[order["label"] == 0]["id"].tolist()
        k = max(1, images // 3)
        chosen = diseased[:k] + diseased[::-1][:k] + healthy[:images - 2 * k]
        chosen = list(dict.fromkeys(chosen))
        write_text(choice_file, json.dumps(chosen))
    keep = predictions[predictions["id"].isin(chosen)].reset_index(drop=True)
    positions = {ident: i for i, ident in enumerate(data.ids(data.test))}
    rows = np.array([data.test[positions[i]] for i in keep["id"]], dtype=int)
    write_heatmaps(data.prepared, rows, keep, run.report_dir / "figures", f"{GALLERY_PREFIX}{label}-")


def comparisons(config: SSLGANExperimentConfig) -> list[tuple[str, str]]:
    """``(a, b)`` pairs compared by DeLong's test: the reference vs each baseline, and the
    extension vs the reference."""
    pairs = [(config.reference, b) for b in config.baselines]
    if config.extension.enabled:
        pairs.append((config.extension.label, config.extension.learner))
    return pairs


def pair_init(config: SSLGANExperimentConfig, a: str, b: str) -> str:
    """The initialisation of a compared pair of cells (labels ``a`` and ``b``): the one both
    learners start from, or ``"<a's> vs <b's>"`` (:func:`~retinassl.models.initialize.init_label`)."""
    learners = {label: learner for label, learner, *_ in plan_cells(config)}
    inits = [init_label(config.learners[learners.get(label, label)].model.init) for label in (a, b)]
    return inits[0] if inits[0] == inits[1] else " vs ".join(inits)


def append_comparisons(config: SSLGANExperimentConfig, run: RunDir, data: PatchData) -> None:
    """Paired DeLong tests (image level, same test images) for every cell pair that exists and has
    not been tested yet: one test per (pair, count, seed), rows ``delong_p``, ``delong_z`` and
    ``auc_difference`` with method ``"a vs b"``."""
    with file_lock(run.path / "comparisons"):
        _append_comparisons(config, run, data)


def _append_comparisons(config: SSLGANExperimentConfig, run: RunDir, data: PatchData) -> None:
    folders = {TASK: run.path / "predictions" / PREDICTIONS}  # the test images, then each external set
    folders.update({external_task(TaskSpec(name=TASK), s).name: prediction_folder(run, s) for s in config.evaluate_on})
    rows = []
    for task, folder in folders.items():
        rows += _task_comparisons(config, run, data, task, folder)
    append_results(run.results_file, rows)


def _task_comparisons(config: SSLGANExperimentConfig, run: RunDir, data: PatchData, task: str,
                      folder: Path) -> list[dict]:
    done = _done(run, "delong_p", task)
    rows = []
    for a, b in comparisons(config):
        init = pair_init(config, a, b)
        for n in config.labelled:
            for seed in config.seeds:
                key = (f"{a} vs {b}", n, seed)
                pa, pb = folder / f"{cell_name(a, n, seed)}.csv", folder / f"{cell_name(b, n, seed)}.csv"
                if key in done or not (pa.is_file() and pb.is_file()):
                    continue
                fa, fb = pd.read_csv(pa), pd.read_csv(pb)
                if fa["id"].tolist() != fb["id"].tolist():
                    raise ConfigError(f"{pa} and {pb} do not hold the same test images")
                test = delong_test(fa["label"].to_numpy(), fa["score"].to_numpy(), fb["score"].to_numpy())
                for metric, value in (("delong_p", test.p_value), ("delong_z", test.z),
                                      ("auc_difference", test.difference)):
                    rows.append(result_row(experiment=config.name, task=task, method=key[0],
                                           init=init, protocol="comparison",
                                           fraction=n / len(data.train), n_labelled=n, seed=seed,
                                           metric=metric, value=value))
    return rows


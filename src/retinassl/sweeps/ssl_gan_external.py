"""External validation inside the SSL-GAN sweep (``evaluate_on``; issue 17 item 5): every cell's
patch classifier (the SSL-GAN, the supervised ConvNet and ResNet34, the extension) also scores each
external dataset, as Lecouat et al. 2018 test their IDRiD model on Kaggle/EyePACS images.

The image score is the in-domain one (the classifier's rule: ``sum_j sigmoid(l_j)`` over the 8x8
patches, or the ``tissue`` mean; :func:`retinassl.metrics.image_score.image_scores`), of the external images prepared with the sweep's
preprocessing. Rows: task ``patch:abnormal@<name>`` with the cell's method, count and seed, metrics
of a binary task (``auc``, ``ap``, ``sens_at_spec``, ``n_test``: :mod:`retinassl.sweeps.external`);
predictions: ``predictions/ssl-gan@<name>/<cell>.csv`` as the in-domain ones (``id, label, score``
and the patch logits). The cell appends them with its in-domain rows (one write, so a resumed sweep
never has one without the other); cells done before ``evaluate_on`` was added are scored at the
end of a resumed sweep when their classifier was kept (``keep_weights``), else named in the log.
The paired DeLong test of two learners runs on each external set as on the test images
(:func:`retinassl.sweeps.ssl_gan.append_comparisons`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from retinassl.atomic import write_text
from retinassl.config import ExternalSpec
from retinassl.data.cache import Cache
from retinassl.errors import ConfigError
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.jobs.patch_config import SSLGANExperimentConfig
from retinassl.jobs.patch_evaluation import score_images
from retinassl.metrics.tasks import TaskSpec
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.sweeps.external import ExternalSet, check_names, load_external

log = logging.getLogger(__name__)


def check_evaluate_on(specs: Sequence[ExternalSpec], task: str) -> None:
    """Unique names; ``task``, when given, is the sweep's one task.

    Raises:
        ConfigError: a repeated name or another task.
    """
    check_names(specs)
    for spec in specs:
        if spec.task not in (None, task):
            raise ConfigError(f"evaluate_on {spec.name}: the ssl-gan sweep has one task, {task!r} "
                              f"(got task {spec.task!r}; leave it out)")


def prepare_externals(config: SSLGANExperimentConfig, task: str, run: RunDir) -> list[ExternalSet]:
    """Every ``evaluate_on`` dataset, labelled and prepared with the sweep's preprocessing."""
    cache = Cache(config.data.cache_dir)
    return [load_external(s, TaskSpec(name=task), config.preprocess, cache, run,
                          workers=config.data.workers, skip_bad=config.data.skip_bad)
            for s in config.evaluate_on]


def prediction_folder(run: RunDir, spec: ExternalSpec) -> Path:
    """``predictions/ssl-gan@<name>/`` (the in-domain cells' files are in ``predictions/ssl-gan/``)."""
    return run.path / "predictions" / f"ssl-gan@{spec.name}"


def score_external(classifier: PatchClassifier, external: ExternalSet, run: RunDir, cell: str,
                   template: Mapping[str, Any]) -> list[dict]:
    """One cell's classifier on one external set: writes ``<prediction_folder>/<cell>.csv``
    (``id, label, score, patch_00..`` logits) and returns the result rows (``template``: the cell's
    in-domain row)."""
    scores, logits = score_images(classifier, external.prepared, range(len(external.prepared)))
    table = pd.DataFrame({"id": external.ids, "label": external.labels, "score": scores})
    patches = pd.DataFrame(logits, columns=[f"patch_{j:02d}" for j in range(logits.shape[1])])
    write_text(prediction_folder(run, external.spec) / f"{cell}.csv",
               pd.concat([table, patches], axis=1).to_csv(index=False))
    return external.result_rows(template, scores)


def scored_cells(run: RunDir, external: ExternalSet) -> set[tuple[str, int, int]]:
    """``(method, n_labelled, seed)`` of the cells whose rows on ``external`` are in the results table."""
    if not run.results_file.is_file():
        return set()
    table = read_results(run.results_file)
    table = table[(table["task"] == external.scored_task.name) & (table["metric"] == "auc")]
    return {(str(m), int(n), int(s)) for m, n, s in zip(table["method"], table["n_labelled"], table["seed"])}

"""External validation inside a sweep (``evaluate_on``), shared by the transfer sweep
(:mod:`retinassl.sweeps.transfer_external`) and the SSL-GAN sweep
(:mod:`retinassl.sweeps.ssl_gan_external`): every cell's model also scores each external dataset, so
one command gives in-domain and external columns (Jang et al. 2024 validate their models externally
on JSIEC and RFMiD; Lecouat et al. 2018 test their IDRiD model on Kaggle).

An external dataset (:class:`~retinassl.config.ExternalSpec`) is labelled by a label mapping in its
own terms (``dr_stage>=1``...; :func:`retinassl.jobs.predict.mapped_labels`) and prepared with the
sweep's preprocessing (the cells' models were trained on it). Its results are rows of the binary
task ``<task>@<name>`` (the in-domain cell's row with the external task, metric and value), its
predictions files beside the in-domain ones; byte-identical copies of in-domain images are warned
about (:func:`warn_overlap`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import write_text
from retinassl.config import ExternalSpec
from retinassl.data.cache import Cache, PreparedData
from retinassl.data.leakage import content_digests
from retinassl.data.loading import load_manifest
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
from retinassl.errors import ConfigError
from retinassl.io.rundir import RunDir
from retinassl.jobs.predict import mapped_labels
from retinassl.metrics.tasks import TaskSpec

log = logging.getLogger(__name__)


def external_task(task: TaskSpec, spec: ExternalSpec) -> TaskSpec:
    """The binary task ``<task>@<name>`` an external dataset's rows and predictions are filed under."""
    return TaskSpec(name=f"{task.name}@{spec.name}", kind="binary", label=spec.label)


def check_names(specs: Sequence[ExternalSpec]) -> None:
    """``evaluate_on`` names are unique (they name result tasks and prediction folders).

    Raises:
        ConfigError: a name given twice.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluate_on: names must be unique, got {names}")


@dataclass
class ExternalSet:
    """One prepared external dataset: the sweep task it evaluates and the binary label per row."""

    spec: ExternalSpec
    task: TaskSpec
    prepared: PreparedData
    labels: np.ndarray

    @property
    def ids(self) -> list[str]:
        return self.prepared.manifest.frame["id"].astype(str).tolist()

    @property
    def scored_task(self) -> TaskSpec:
        """The task ``<task>@<name>`` of its rows (:func:`external_task`)."""
        return external_task(self.task, self.spec)

    def result_rows(self, template: Mapping[str, Any], score: np.ndarray) -> list[dict]:
        """The rows of one model's binary ``score`` per image: the in-domain ``template`` row with
        the external task, each metric of a binary task and its value."""
        task = self.scored_task
        return [{**template, "task": task.name, "metric": k, "value": float(v)}
                for k, v in task.metrics(self.labels, np.asarray(score, dtype=float)).items()]


def load_external(spec: ExternalSpec, task: TaskSpec, preprocess: PreprocessConfig, cache: Cache, run: RunDir,
                  workers: int = 1, skip_bad: bool = False) -> ExternalSet:
    """Load, label and prepare one ``evaluate_on`` dataset with the sweep's ``preprocess`` (its
    rows recorded in ``data/external-<name>.csv``).

    Raises:
        ConfigError: the mapping leaves fewer than two classes.
    """
    manifest = load_manifest(spec.data)
    if spec.split:
        manifest = manifest.subset((manifest.frame["split"].astype(str) == spec.split).to_numpy())
    labels, has = mapped_labels(manifest, spec.label)
    if has.sum() == 0 or len(np.unique(labels[has])) < 2:
        raise ConfigError(f"evaluate_on {spec.name}: label {spec.label!r} leaves {int(has.sum())} labelled "
                          f"images with {len(np.unique(labels[has]))} class(es): an AUC needs both")
    labelled = manifest.subset(has)
    prepared = cache.prepare(labelled, preprocess, workers=max(1, workers), mask_columns=[], skip_bad=skip_bad)
    of = dict(zip(manifest.frame["id"].astype(str), labels))
    y = np.array([of[i] for i in prepared.manifest.frame["id"].astype(str)], dtype=int)
    prepared.manifest.save(run.sub("data") / f"external-{spec.name}.csv")
    log.info("evaluate_on %s: %d images (%d positive) for task %s", spec.name, len(y), int(y.sum()), task.name)
    return ExternalSet(spec, task, prepared, y)


def warn_overlap(external: ExternalSet, others: Mapping[str, Manifest], cache: Cache, run: RunDir) -> pd.DataFrame:
    """Byte-identical copies of external images among the in-domain images or a pretraining pool
    (``others``: name -> manifest), which would make the external column less external: a
    warning, and the pairs in ``data/external-<name>-overlap.csv``."""
    mine = content_digests(external.prepared.manifest, cache.memo)
    pairs = []
    for what, manifest in others.items():
        theirs: dict[str, str] = {}
        for ident, digest in zip(manifest.frame["id"].astype(str), content_digests(manifest, cache.memo)):
            theirs.setdefault(digest, ident)
        pairs += [{"external_id": i, "in": what, "id": theirs[d]} for i, d in zip(external.ids, mine) if d in theirs]
    table = pd.DataFrame(pairs, columns=["external_id", "in", "id"])
    if len(table):
        log.warning("evaluate_on %s: %d image(s) are byte-identical copies of %s images (e.g. %s = %s); "
                    "listed in data/external-%s-overlap.csv", external.spec.name, table["external_id"].nunique(),
                    " and ".join(sorted(set(table["in"]))), table.at[0, "external_id"], table.at[0, "id"],
                    external.spec.name)
        write_text(run.sub("data") / f"external-{external.spec.name}-overlap.csv", table.to_csv(index=False))
    return table

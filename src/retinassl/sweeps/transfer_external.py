"""External validation inside the transfer sweep (``evaluate_on``): every cell's model -- the linear
probe on the init's frozen features, or the fine-tuned network -- also scores each external
dataset, so one command gives in-domain and external columns (Jang et al. 2024 validate their
models externally on JSIEC and RFMiD; Lecouat et al. 2018 test their IDRiD model on Kaggle).

An external dataset is labelled by a label mapping in its own terms (``dr_stage>=1``...;
:func:`retinassl.jobs.predict.mapped_labels`) and prepared with the sweep's preprocessing (the
cells' models were trained on it). Its results are rows of the task ``<task>@<name>`` (same init,
protocol, fraction, seed and fold as the in-domain cell, appended together with the cell's rows,
so a resumed sweep never has one without the other), and its predictions the usual files under
``predictions/transfer/<task>@<name>/``; the comparison table treats it as one more binary task,
and ``external.csv`` / ``external.md`` set each in-domain column beside its external ones. The
loading, labelling, overlap warning and result rows are shared with the SSL-GAN sweep
(:mod:`retinassl.sweeps.external`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import write_text
from retinassl.data.cache import Cache
from retinassl.errors import ConfigError
from retinassl.io.rundir import RunDir
from retinassl.metrics.tasks import TaskSpec
from retinassl.config import ExternalSpec
from retinassl.sweeps.external import ExternalSet, external_task, load_external
from retinassl.sweeps.transfer_config import TransferConfig
from retinassl.sweeps.transfer_data import prediction_path

log = logging.getLogger(__name__)


def binary_score(task: TaskSpec, scores: np.ndarray) -> np.ndarray:
    """A cell's scores as one binary score per image: the probability of a binary task, ``P(y >=
    positive_from)`` of a graded one."""
    pair = task.binary_scores(np.zeros(len(scores), dtype=int), scores)
    if pair is None:
        raise ConfigError(f"task {task.name!r} has no binary score to evaluate externally")
    return np.asarray(pair[1], dtype=float)


def prepare_external(config: TransferConfig, spec: ExternalSpec, cache: Cache, run: RunDir) -> ExternalSet:
    """Load, label and prepare one ``evaluate_on`` dataset with the sweep's preprocessing
    (:func:`~retinassl.sweeps.external.load_external`; its rows in ``data/external-<name>.csv``).

    Raises:
        ConfigError: the mapping leaves fewer than two classes.
    """
    return load_external(spec, config.evaluated_task(spec), config.preprocess, cache, run,
                         workers=config.data.workers, skip_bad=config.data.skip_bad)


def external_rows(run: RunDir, external: ExternalSet, template: Mapping[str, Any], cell: Mapping[str, Any],
                  scores: np.ndarray) -> list[dict]:
    """Write one cell's predictions of an external dataset (``cell``: its ``fraction``, ``seed``,
    ``fold``) and return its result rows: the cell's in-domain ``template`` row with the external
    task, metric and value."""
    task = external_task(external.task, external.spec)
    score = binary_score(external.task, scores)
    path = prediction_path(run, task.name, template["protocol"], template["init"], cell["fraction"], cell["seed"],
                           cell["fold"])
    write_text(path, task.prediction_frame(external.ids, external.labels, score).to_csv(index=False))
    return external.result_rows(template, score)


def with_external_tasks(config: TransferConfig) -> TransferConfig:
    """The config whose ``tasks`` also list the external tasks (for the comparison table)."""
    extra = [external_task(config.evaluated_task(s), s) for s in config.evaluate_on]
    return config.model_copy(update={"tasks": [*config.tasks, *extra]})


def external_table(comparison: pd.DataFrame, config: TransferConfig) -> pd.DataFrame:
    """In-domain beside external: per (task, protocol, fraction, init), the in-domain binary metric
    (``auc``/``auc_bin``) and each external dataset's AUC, with their intervals."""
    keys = ["protocol", "fraction", "init"]
    out = []
    for task in dict.fromkeys(config.evaluated_task(s).name for s in config.evaluate_on):
        spec = next(t for t in config.tasks if t.name == task)
        here = comparison[(comparison["task"] == task) & (comparison["metric"] == spec.binary_metric)]
        table = here[keys + ["mean", "lo", "hi"]].rename(columns={"mean": "in_domain", "lo": "in_domain_lo",
                                                                 "hi": "in_domain_hi"})
        for s in config.evaluate_on:
            if config.evaluated_task(s).name != task:
                continue
            other = comparison[(comparison["task"] == f"{task}@{s.name}") & (comparison["metric"] == "auc")]
            other = other[keys + ["mean", "lo", "hi"]].rename(columns={"mean": s.name, "lo": f"{s.name}_lo",
                                                                      "hi": f"{s.name}_hi"})
            table = table.merge(other, on=keys, how="outer")
        table.insert(0, "task", task)
        table.insert(1, "metric", spec.binary_metric)
        out.append(table)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def write_external_table(run: RunDir, comparison: pd.DataFrame, config: TransferConfig) -> pd.DataFrame | None:
    """``external.csv`` and ``external.md`` (:func:`external_table`), when the sweep has ``evaluate_on``."""
    if not config.evaluate_on:
        return None
    table = external_table(comparison, config)
    write_text(run.path / "external.csv", table.to_csv(index=False))
    lines = []
    for (task, protocol), block in table.groupby(["task", "protocol"], sort=False):
        columns = ["in_domain", *[s.name for s in config.evaluate_on if f"{s.name}_lo" in block.columns]]
        lines.append(f"**{task}, {'linear probe' if protocol == 'probe' else 'fine-tuning'}** "
                     f"({block['metric'].iloc[0]} in-domain, AUC external; mean [95 % interval])\n")
        lines.append("| init | fraction | " + " | ".join(columns) + " |")
        lines.append("|---|---|" + "---|" * len(columns))
        for row in block.sort_values(["init", "fraction"]).itertuples(index=False):
            row = row._asdict()
            cells = [f"{row[c]:.3f} [{row[f'{c}_lo']:.3f}, {row[f'{c}_hi']:.3f}]" if pd.notna(row[c]) else "-"
                     for c in columns]
            lines.append(f"| {row['init']} | {row['fraction']:g} | " + " | ".join(cells) + " |")
        lines.append("")
    write_text(run.path / "external.md", "\n".join(lines))
    return table


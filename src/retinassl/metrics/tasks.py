"""Downstream tasks of the transfer protocol: what is predicted from which manifest column(s), and
how a prediction is scored.

Three kinds (Jang et al. 2024's abnormality, multi-disease and grading tasks):

- ``binary``: one score per image, e.g. abnormal vs normal (``label: abnormal``) or referable DR
  (``label: dr_grade``, ``positive_from: 2``: grade >= 2). Metrics: ``auc``, ``ap`` (average
  precision), ``sens_at_spec`` (sensitivity at ``specificity``, 0.9 by default).
- ``multiclass``: K class probabilities, e.g. DR grade 0-4 or DME risk 0-2. Metrics: ``kappa``
  (quadratic-weighted, on the arg-max class), ``accuracy``; with ``positive_from`` also
  ``auc_bin``, the AUC of ``P(class >= positive_from)`` (e.g. referable DR from a grading model),
  which makes a grading model comparable with DeLong's test.
- ``multilabel``: K independent scores for multi-hot ``disease_*`` columns (RFMiD). Metrics:
  ``auc_macro`` and ``auc[<column>]`` per label.

Prediction files (CSV, one row per test image) keep everything a later statistic needs:
``id``, ``label`` (or ``label[<column>]``), and ``score`` (binary) or ``score_<k>`` /
``score[<column>]``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from retinassl.config import Section
from retinassl.data.manifest import DISEASE_PREFIX, Manifest, label_range
from retinassl.errors import ConfigError, DataError
from retinassl.metrics.classification import (accuracy, average_precision, multilabel_auc, quadratic_kappa, roc_auc,
                      sensitivity_at_specificity)


class TaskSpec(Section):
    """One downstream task.

    Attributes:
        name: short name used in results and file names (``referable``, ``dr_grade``...).
        kind: ``binary``, ``multiclass`` or ``multilabel``.
        label: the label column; for ``multilabel``, a column-name prefix (default ``disease_``).
        columns: ``multilabel`` columns (default: every column starting with ``label``).
        positive_from: ``binary``: positive = ``label >= positive_from``; ``multiclass``: also
            report the AUC of ``P(class >= positive_from)``.
        num_classes: ``multiclass`` classes (default: the column's known range, e.g. 5 grades).
        stratify: column that stratifies label-fraction subsets and folds (default: the label;
            ``multilabel``: "has any positive label").
        specificity: the operating point of ``sens_at_spec``.
    """

    name: str
    kind: Literal["binary", "multiclass", "multilabel"] = "binary"
    label: str = "abnormal"
    columns: list[str] = Field(default_factory=list)
    positive_from: int | None = None
    num_classes: int | None = Field(None, ge=2)
    stratify: str | None = None
    specificity: float = Field(0.9, gt=0, lt=1)

    # -- what is predicted -------------------------------------------------------------------
    def label_columns(self, manifest: Manifest) -> list[str]:
        """The manifest column(s) the targets come from."""
        frame = manifest.frame
        if self.kind != "multilabel":
            cols = [self.label]
        elif self.columns:
            cols = list(self.columns)
        else:
            prefix = self.label if self.label != "abnormal" else DISEASE_PREFIX
            cols = sorted(c for c in frame.columns if c.startswith(prefix))
        missing = [c for c in cols if c not in frame.columns]
        if missing or not cols:
            raise DataError(f"task {self.name!r} needs label column(s) {missing or self.label!r}; the "
                            f"manifest has {list(frame.columns)}", path=manifest.name)
        return cols

    def classes(self, manifest: Manifest) -> int:
        """Outputs of the classifier: 1 (binary), K classes or K labels."""
        if self.kind == "binary":
            return 1
        if self.kind == "multilabel":
            return len(self.label_columns(manifest))
        if self.num_classes is not None:
            return self.num_classes
        try:
            low, high = label_range(self.label)
        except KeyError:
            raise ConfigError(f"task {self.name!r}: set num_classes for column {self.label!r}") from None
        return high + 1 if low == 0 else high - low + 1

    def labelled_rows(self, manifest: Manifest) -> np.ndarray:
        """Rows that have every label the task needs."""
        raw = np.stack([manifest.labels(c) for c in self.label_columns(manifest)], axis=1)
        return np.flatnonzero((raw >= 0).all(axis=1))

    def targets(self, manifest: Manifest) -> np.ndarray:
        """``(N,)`` int (binary 0/1, multiclass 0..K-1) or ``(N, K)`` int multi-hot; -1 = missing."""
        cols = self.label_columns(manifest)
        if self.kind == "multilabel":
            return np.stack([manifest.labels(c) for c in cols], axis=1)
        y = manifest.labels(cols[0])
        if self.kind == "binary" and self.positive_from is not None:
            return np.where(y < 0, -1, (y >= self.positive_from).astype(np.int64))
        if self.kind == "multiclass" and y.max(initial=0) >= self.classes(manifest):
            raise DataError(f"task {self.name!r}: {cols[0]} has class {int(y.max())} but "
                            f"num_classes is {self.classes(manifest)}", path=manifest.name)
        return y

    def label_map(self):  # -> callable | None, for ImageDataset
        """Map from the raw column value to the training target (binary thresholding)."""
        if self.kind == "binary" and self.positive_from is not None:
            t = self.positive_from
            return lambda g: int(g >= t)
        return None

    def dataset_label(self, manifest: Manifest) -> str | list[str]:
        """What :class:`~retinassl.data.datasets.ImageDataset` reads as ``label``."""
        cols = self.label_columns(manifest)
        return cols if self.kind == "multilabel" else cols[0]

    def strata(self, manifest: Manifest) -> np.ndarray:
        """``(N,)`` integer strata for label-fraction subsets and folds."""
        if self.stratify is not None:
            return manifest.labels(self.stratify)
        y = self.targets(manifest)
        return y.max(axis=1) if y.ndim == 2 else y

    def supervised_params(self, manifest: Manifest) -> dict:
        """The ``supervised`` method's task settings."""
        return {"task": self.kind, "num_classes": max(2, self.classes(manifest))}

    # -- how it is scored --------------------------------------------------------------------
    @property
    def primary(self) -> str:
        """The headline metric: ``auc``, ``kappa`` or ``auc_macro``."""
        return {"binary": "auc", "multiclass": "kappa", "multilabel": "auc_macro"}[self.kind]

    @property
    def binary_metric(self) -> str | None:
        """The metric whose scores DeLong's test compares (None when the task has none)."""
        if self.kind == "binary":
            return "auc"
        if self.kind == "multiclass" and self.positive_from is not None:
            return "auc_bin"
        return None

    def binary_scores(self, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(labels 0/1, scores)`` for DeLong's test, or None."""
        if self.kind == "binary":
            return labels.astype(int), scores
        if self.kind == "multiclass" and self.positive_from is not None:
            return (labels >= self.positive_from).astype(int), scores[:, self.positive_from:].sum(axis=1)
        return None

    def metrics(self, labels: np.ndarray, scores: np.ndarray, names: list[str] | None = None) -> dict[str, float]:
        """All metrics of one prediction.

        Args:
            labels: ``(N,)`` or ``(N, K)`` targets as from :meth:`targets`.
            scores: ``(N,)`` binary scores, ``(N, K)`` class probabilities or label scores.
            names: multilabel column names.
        """
        out: dict[str, float] = {"n_test": float(len(labels))}
        if self.kind == "binary":
            out["auc"] = roc_auc(labels, scores)
            out["ap"] = average_precision(labels, scores)
            out["sens_at_spec"] = sensitivity_at_specificity(labels, scores, self.specificity)
        elif self.kind == "multiclass":
            predicted = scores.argmax(axis=1)
            out["kappa"] = quadratic_kappa(labels, predicted, scores.shape[1])
            out["accuracy"] = accuracy(labels, predicted)
            pair = self.binary_scores(labels, scores)
            if pair is not None:
                out["auc_bin"] = roc_auc(*pair)
        else:
            per = multilabel_auc(labels, scores, names)
            out["auc_macro"] = per.pop("macro")
            out.update({f"auc[{k}]": v for k, v in per.items()})
        return out

    # -- prediction files --------------------------------------------------------------------
    def prediction_frame(self, ids: list[str], labels: np.ndarray, scores: np.ndarray,
                         names: list[str] | None = None) -> pd.DataFrame:
        """One row per image: ``id``, label(s), score(s) (see the module docstring)."""
        frame = pd.DataFrame({"id": ids})
        if self.kind == "multilabel":
            for k, name in enumerate(names or []):
                frame[f"label[{name}]"] = labels[:, k].astype(int)
            for k, name in enumerate(names or []):
                frame[f"score[{name}]"] = scores[:, k]
        else:
            frame["label"] = labels.astype(int)
            if scores.ndim == 1:
                frame["score"] = scores
            else:
                for k in range(scores.shape[1]):
                    frame[f"score_{k}"] = scores[:, k]
        return frame

    def read_prediction(self, frame: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(ids, labels, scores)`` back from :meth:`prediction_frame`'s table."""
        ids = frame["id"].astype(str).tolist()
        if self.kind == "multilabel":
            lab = [c for c in frame.columns if c.startswith("label[")]
            sco = [c for c in frame.columns if c.startswith("score[")]
            return ids, frame[lab].to_numpy(int), frame[sco].to_numpy(float)
        if "score" in frame.columns:
            return ids, frame["label"].to_numpy(int), frame["score"].to_numpy(float)
        cols = sorted((c for c in frame.columns if c.startswith("score_")), key=lambda c: int(c[6:]))
        return ids, frame["label"].to_numpy(int), frame[cols].to_numpy(float)

"""Linear probe: a logistic regression on frozen, cached encoder embeddings.

Jang et al. 2024 assess "the quality of learned representations ... through linear probing (LP)
and full fine-tuning (FT)". Here the encoder's pooled embeddings are extracted once per
(encoder, dataset, preprocessing) (:mod:`retinassl.jobs.features`), and every label fraction,
seed and fold then fits only a linear classifier on its rows.

The classifier is scikit-learn's ``LogisticRegression`` (L2, L-BFGS) on standardised features,
not a torch linear layer trained by SGD: on fixed features the problem is convex, so L-BFGS
reaches the optimum in milliseconds, deterministically, with no learning rate, epoch count or
early stopping to tune per label fraction; an SGD-trained layer would reach the same optimum more
slowly and would only differ with augmentation, which would rule out caching the features. The
inverse regularisation strength ``C`` is chosen per probe by stratified inner cross-validation on
the labelled subset when every class is in at least ``inner_folds`` patients besides those kept out
(AUC for binary tasks, log-loss otherwise), and is ``c_default`` below that (1 % of IDRiD is 5 images). The inner folds
never split a patient, and never validate on the rows the caller keeps out of every choice (images
whose labels or masks the encoder's pretraining read: their features score its memory, which no
test image has); ``inner_cv: rows`` gives the earlier folds over the rows.

As in moco-v3 (``sanity_check``: "the linear classifier should not change the pre-trained
backbone"), :func:`assert_frozen` compares every weight and buffer of the encoder (including
batch-norm running statistics) before and after, and raises :class:`BackboneChanged` if anything
moved.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from retinassl.config import Section
from retinassl.data.cache import PreparedData
from retinassl.data.splits import inner_folds
from retinassl.errors import ConfigError
from retinassl.jobs.features import Features, extract_features
from retinassl.metrics.classification import roc_auc
from retinassl.metrics.tasks import TaskSpec
from retinassl.models.vit_transfer import set_pooling

log = logging.getLogger(__name__)


class ProbeConfig(Section):
    """Linear-probe settings.

    Attributes:
        c_grid: candidate inverse L2 strengths for the inner cross-validation.
        c_default: ``C`` when the inner folds cannot be made (a class in fewer than ``inner_folds``
            patients besides those kept out, see :func:`~retinassl.data.splits.inner_folds`).
        inner_folds: folds of the inner cross-validation that picks ``C``.
        class_weight: ``none`` or ``balanced`` (weights inversely proportional to class counts).
        max_iter: L-BFGS iterations.
        inner_cv: ``grouped``: the inner folds never split a patient and never validate on rows
            the caller keeps out (:func:`~retinassl.data.splits.inner_folds`); ``rows``: stratified
            folds over the rows, blind to both (runs started before ``grouped`` existed).
        pooling: the embedding of a ViT encoder: ``encoder`` (as the encoder was built or saved),
            ``cls`` (the class token) or ``mean`` (the mean of the patch tokens, as RETFound and
            RETFound-Green are probed); other encoders always average their feature map, and
            accept only ``encoder``.
    """

    c_grid: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])
    c_default: float = Field(1.0, gt=0)
    inner_folds: int = Field(3, ge=2)
    class_weight: Literal["none", "balanced"] = "none"
    max_iter: int = Field(3000, ge=10)
    inner_cv: Literal["grouped", "rows"] = "grouped"
    pooling: Literal["encoder", "cls", "mean"] = "encoder"


def earlier_probe_settings() -> dict:
    """The probe settings of a run recorded before a field existed (``check_unchanged``'s defaults):
    the defaults, but ``inner_cv: rows``, the folds every run chose ``C`` on before ``grouped`` existed."""
    return {**ProbeConfig().model_dump(mode="json"), "inner_cv": "rows"}


class BackboneChanged(AssertionError):
    """The encoder's weights or buffers changed during a linear probe (they must stay frozen)."""


@contextlib.contextmanager
def assert_frozen(module: nn.Module) -> Iterator[None]:
    """Raise :class:`BackboneChanged` if any tensor of ``module.state_dict()`` changes inside the block.

    A copy of the state dict is kept and compared exactly (``torch.equal``), so the error can name
    the tensors that moved (e.g. batch-norm running means of an encoder left in train mode).
    """
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    yield
    after = module.state_dict()
    changed = sorted(k for k in before if k not in after or not torch.equal(before[k], after[k].detach()))
    changed += sorted(k for k in after if k not in before)
    if changed:
        raise BackboneChanged(f"the linear probe changed {len(changed)} backbone tensor(s), e.g. "
                              f"{', '.join(changed[:4])}; the encoder must stay frozen")


def _scaled(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(train)
    return scaler.transform(train), scaler.transform(test)


def _logistic(c: float, config: ProbeConfig, seed: int) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=config.max_iter, random_state=seed,
                              class_weight=None if config.class_weight == "none" else config.class_weight)


def _choose_c(x: np.ndarray, y: np.ndarray, config: ProbeConfig, seed: int,
              groups: np.ndarray | None = None, always_fitted: np.ndarray | None = None) -> float:
    """``C`` by the inner cross-validation (AUC for 2 classes, log-loss otherwise): folds of
    :func:`~retinassl.data.splits.inner_folds` (``inner_cv: grouped``: patients never split, rows
    ``always_fitted`` never validated on) or stratified folds over the rows (``inner_cv: rows``);
    ``c_default`` when the rows cannot give the folds."""
    classes = np.unique(y)
    if len(config.c_grid) < 2:
        return config.c_default
    if config.inner_cv == "rows":
        groups, always_fitted = None, None
    folds = inner_folds(y, groups, config.inner_folds, seed, always_fitted)
    if folds is None:
        return config.c_default
    best, best_c = -np.inf, config.c_default
    for c in config.c_grid:
        values = []
        for tr, va in folds:
            xt, xv = _scaled(x[tr], x[va])
            model = _logistic(c, config, seed).fit(xt, y[tr])
            proba = model.predict_proba(xv)
            if len(classes) == 2:
                values.append(roc_auc(y[va] == classes[1], proba[:, 1]))
            else:
                values.append(-log_loss(y[va], proba, labels=classes))
        value = float(np.nanmean(values)) if np.isfinite(values).any() else -np.inf
        if value > best:
            best, best_c = value, c
    return best_c


def _fit_predict_1d(x: np.ndarray, y: np.ndarray, test: np.ndarray, num_classes: int,
                    config: ProbeConfig, seed: int, groups: np.ndarray | None,
                    always_fitted: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Class probabilities ``(M, num_classes)`` for one single-label problem, and the chosen C."""
    classes = np.unique(y)
    out = np.zeros((len(test), num_classes))
    if len(classes) == 1:  # nothing to separate: predict the only class seen
        out[:, int(classes[0])] = 1.0
        return out, float("nan")
    scaler, model, c = _fit_logistic(x, y, config, seed, groups, always_fitted)
    out[:, model.classes_.astype(int)] = model.predict_proba(scaler.transform(test))
    return out, c


def _fit_logistic(x: np.ndarray, y: np.ndarray, config: ProbeConfig, seed: int,
                  groups: np.ndarray | None = None,
                  always_fitted: np.ndarray | None = None) -> tuple[StandardScaler, LogisticRegression, float]:
    """The probe of one single-label problem: its scaler, the logistic regression on the scaled
    features and the ``C`` chosen by inner cross-validation (:func:`_choose_c`)."""
    c = _choose_c(x, y, config, seed, groups, always_fitted)
    scaler = StandardScaler().fit(x)
    return scaler, _logistic(c, config, seed).fit(scaler.transform(x), y), c


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, task: TaskSpec,
              num_outputs: int, config: ProbeConfig = ProbeConfig(), seed: int = 0,
              groups: Sequence[str] | None = None,
              always_fitted: np.ndarray | None = None) -> tuple[np.ndarray, list[float]]:
    """Fit the probe on ``(train_x, train_y)`` and score ``test_x``.

    Args:
        train_x: ``(N, C)`` embeddings; train_y: ``(N,)`` or ``(N, K)`` targets.
        test_x: ``(M, C)`` embeddings.
        task: the task (its ``kind``).
        num_outputs: 1 (binary), classes (multiclass) or labels (multilabel).
        groups: ``(N,)`` patient of each training row (None or empty: its own), never split by the
            inner cross-validation that chooses ``C``.
        always_fitted: ``(N,)`` bool, training rows (with their patients) the inner
            cross-validation never validates on (images whose labels or masks the encoder's
            pretraining read).

    Returns:
        scores ``(M,)`` (binary: P(positive)), ``(M, K)`` class probabilities or label scores;
        and the ``C`` chosen for each fitted problem (NaN where a subset had one class).
    """
    # One BLAS/OpenMP thread: these problems are small, and on a busy machine OpenBLAS's spinning
    # worker threads made a 400 x 512 multinomial fit 60 times slower (4.6 s instead of 0.07 s).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if task.kind == "binary":
            proba, c = _fit_predict_1d(train_x, train_y, test_x, 2, config, seed, groups, always_fitted)
            return proba[:, 1], [c]
        if task.kind == "multiclass":
            proba, c = _fit_predict_1d(train_x, train_y, test_x, num_outputs, config, seed, groups, always_fitted)
            return proba, [c]
        scores, cs = np.zeros((len(test_x), num_outputs)), []
        for k in range(num_outputs):
            proba, c = _fit_predict_1d(train_x, train_y[:, k], test_x, 2, config, seed, groups, always_fitted)
            scores[:, k] = proba[:, 1]
            cs.append(c)
        return scores, cs


def probe_head(x: np.ndarray, y: np.ndarray, task: TaskSpec, num_outputs: int,
               config: ProbeConfig = ProbeConfig(), seed: int = 0, groups: Sequence[str] | None = None,
               always_fitted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The linear probe of ``(x, y)`` as a linear layer on the raw embeddings: ``(weight (K, C),
    bias (K,))`` whose outputs are the probe's logits (binary: the positive class's log-odds, K = 1;
    multiclass: multinomial logits, one per class, a class the rows lack at -30; multilabel: each
    label's log-odds), the standardisation folded in. It starts a fine-tuning head where the probe
    ends (LP-FT, Kumar et al. 2022), so fine-tuning does not begin by pushing random-head gradients
    into the pretrained features. ``C`` is chosen as in :func:`fit_probe` (``groups``, ``always_fitted``).

    Raises:
        ConfigError: a regression task (no logistic probe).
    """
    if task.kind not in ("binary", "multiclass", "multilabel"):
        raise ConfigError(f"task {task.name!r} ({task.kind}): a probe head needs a classification task")
    problems = [y] if task.kind != "multilabel" else [y[:, k] for k in range(num_outputs)]
    weight, bias = np.zeros((num_outputs, x.shape[1])), np.zeros(num_outputs)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k, target in enumerate(problems):
            classes = np.unique(target)
            if len(classes) < 2:  # one class seen: predict it (constant logits)
                if task.kind == "multiclass":
                    bias[:] = -30.0
                    bias[int(classes[0])] = 0.0
                else:
                    bias[k] = 30.0 if int(classes[0]) == 1 else -30.0
                continue
            scaler, model, _ = _fit_logistic(x, target, config, seed, groups, always_fitted)
            coef, intercept = model.coef_, model.intercept_
            if task.kind == "multiclass" and len(model.classes_) == 2:  # sklearn keeps one row: logits (0, z)
                coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
            # w . (x - mean) / scale + b  =  (w / scale) . x + (b - w . mean / scale)
            coef = coef / scaler.scale_
            intercept = intercept - coef @ scaler.mean_
            if task.kind == "multiclass":
                bias[:] = -30.0
                outputs = model.classes_.astype(int)
            else:
                outputs = [k]
            weight[outputs], bias[outputs] = coef, intercept
    return weight, bias


@dataclass
class ProbeResult:
    """Scores of the test rows, the features used, and the chosen regularisation."""

    scores: np.ndarray
    features: Features
    c: list[float]


def linear_probe(encoder: nn.Module, prepared: PreparedData, train_rows: Sequence[int],
                 test_rows: Sequence[int], task: TaskSpec, config: ProbeConfig = ProbeConfig(),
                 seed: int = 0, cache_dir: str | Path | None = None) -> ProbeResult:
    """Embed ``prepared`` with the frozen encoder (cached), fit the probe on ``train_rows`` (its ``C``
    chosen on folds of their patients) and score ``test_rows``; asserts afterwards that the encoder did not change. ``config.pooling`` other than
    ``encoder`` switches a ViT's pooling in place (:func:`~retinassl.models.vit_transfer.set_pooling`).

    Raises:
        BackboneChanged: a weight or buffer of ``encoder`` changed.
        ConfigError: a pooling the encoder cannot do.
    """
    train_rows, test_rows = np.asarray(train_rows, dtype=int), np.asarray(test_rows, dtype=int)
    targets = task.targets(prepared.manifest)
    set_pooling(encoder, config.pooling)
    with assert_frozen(encoder):
        features = extract_features(encoder, prepared, cache_dir)
        scores, cs = fit_probe(features.values[train_rows], targets[train_rows],
                               features.values[test_rows], task, task.classes(prepared.manifest),
                               config, seed, groups=prepared.manifest.patients[train_rows])
    return ProbeResult(scores, features, cs)

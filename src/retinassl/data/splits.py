"""Patient-level stratified splits, nested label-fraction subsets, and stratified k-fold.

Every function takes a ``seed``; the same seed always gives the same split. Images of one patient
(both eyes, repeated visits, duplicates linked by a source) always fall in the same split, so a test
set never contains a patient seen in training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from retinassl.errors import DataError

log = logging.getLogger(__name__)


def _group_table(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Unique groups, the label that stratifies each group (its most severe), and member rows."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    group_labels = np.array([labels[m].max() for m in members])
    return uniq, group_labels, members


def stratified_group_split(labels: Sequence[int], groups: Sequence[str] | None,
                           sizes: Mapping[str, int | float], seed: int) -> np.ndarray:
    """Assign every item to a named split, stratified by label, never splitting a group.

    Args:
        labels: ``(N,)`` integer class of each item.
        groups: ``(N,)`` group (patient) of each item; None or empty strings mean "own group".
        sizes: split name -> number of items (int) or fraction (float). The last split receives
            whatever is left, so its size may be given as anything (e.g. 0).
        seed: random seed.

    Returns:
        ``(N,)`` array of split names.

    Example:
        ``stratified_group_split(y, patients, {"train": 149, "val": 50, "test": 50}, seed=0)``
    """
    labels = np.asarray(labels)
    n = len(labels)
    if groups is None:
        groups = np.array([f"#{i}" for i in range(n)])
    groups = np.array([g if str(g) else f"#{i}" for i, g in enumerate(groups)], dtype=object)
    names = list(sizes)
    counts = {k: (int(round(v * n)) if isinstance(v, float) else int(v)) for k, v in sizes.items()}
    if sum(counts[k] for k in names[:-1]) > n:
        raise DataError(f"split sizes {dict(sizes)} need more than the {n} items available")
    rng = np.random.default_rng(seed)
    uniq, group_labels, members = _group_table(labels, groups.astype(str))
    classes = np.unique(group_labels)
    # Shuffle the groups of each class once; splits take groups from the front of each queue.
    queues = {c: list(rng.permutation(np.flatnonzero(group_labels == c))) for c in classes}
    class_share = {c: sum(len(members[g]) for g in queues[c]) / n for c in classes}
    out = np.empty(n, dtype=object)
    for name in names[:-1]:
        target = counts[name]
        for c in classes:
            want = int(round(target * class_share[c]))
            taken = 0
            while queues[c] and taken < want:
                g = queues[c].pop(0)
                out[members[g]] = name
                taken += len(members[g])
    for c in classes:
        for g in queues[c]:
            out[members[g]] = names[-1]
    return out.astype(str)


def nested_subsets(labels: Sequence[int], sizes: Sequence[int | float], seed: int) -> dict[int | float, np.ndarray]:
    """Nested, stratified labelled subsets: the smaller subset is always inside the larger one.

    One stratified random ordering of the items is drawn from ``seed``; a subset of size ``k`` is
    its first ``k`` items. The ordering starts with one item of each class, so every subset with at
    least as many items as classes contains every class.

    Args:
        labels: ``(N,)`` class of each candidate.
        sizes: subset sizes as counts (int) or fractions of N (float, rounded up).
        seed: random seed.

    Returns:
        size (as given) -> sorted indices into ``labels``.
    """
    order = stratified_order(labels, seed)
    n = len(order)
    out = {}
    for size in sizes:
        k = math.ceil(size * n - 1e-9) if isinstance(size, float) else int(size)
        if not 1 <= k <= n:
            raise DataError(f"a labelled subset of {size} is impossible with {n} candidates")
        out[size] = np.sort(order[:k])
    return out


def stratified_order(labels: Sequence[int], seed: int) -> np.ndarray:
    """A random permutation whose every prefix keeps the class proportions (approximately)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    firsts = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # item i of a class of size m sits at quantile (i + u) / m of the ordering
        keys[idx] = (np.arange(len(idx)) + rng.uniform(0, 1, len(idx))) / len(idx)
        firsts.append(idx[0])
    order = np.argsort(keys, kind="stable")
    firsts_sorted = sorted(firsts, key=lambda i: keys[i])
    rest = [i for i in order if i not in set(firsts_sorted)]
    return np.asarray(firsts_sorted + rest, dtype=int)


def stratified_kfold(labels: Sequence[int], groups: Sequence[str] | None, k: int,
                     seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) index pairs, stratified by label, groups never split across folds."""
    labels = np.asarray(labels)
    if groups is None or all(not str(g) for g in groups):
        groups = np.arange(len(labels))
    else:
        groups = np.array([g if str(g) else f"#{i}" for i, g in enumerate(groups)]).astype(str)
    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    if counts.min() < k:
        raise DataError(f"{k}-fold cross-validation needs at least {k} items of every class; the "
                        f"smallest class has {counts.min()}")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in cv.split(np.zeros(len(labels)), labels, groups)]


def carve_validation(strata: np.ndarray, groups: Sequence[str] | None, fraction: float,
                     seed: int, always_fitted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..N-1`` into (fit, validation), stratified, never splitting a group.

    Each class whose items span at least two groups gives ``max(1, round(fraction * groups))``
    of its groups (but never all of them) to validation; a group counts in the class of its most
    severe item, and classes with a single group stay entirely in the fitted part. When the
    validation part would hold fewer than two classes there is no validation split.
    ``always_fitted`` (``(N,)`` bool): the groups of these items stay in the fitted part and the
    others are carved as if they were all there is (e.g. images whose labels an encoder's
    pretraining read: validating on them would score its memory); when the others alone cannot
    give a validation split, the marks are set aside with a warning (every item may be validated on).

    Returns:
        ``(fit, val)`` sorted positions; ``val`` is empty when no split is possible.
    """
    strata = np.asarray(strata)
    n = len(strata)
    groups = item_groups(groups, n)
    if always_fitted is not None and np.asarray(always_fitted, dtype=bool).any():
        blocked = group_members(groups, always_fitted)
        free = np.flatnonzero(~blocked)
        fit, val = carve_validation(strata[free], groups[free], fraction, seed)
        if len(val):
            return np.sort(np.concatenate([free[fit], np.flatnonzero(blocked)])), free[val]
        log.warning("no validation split without the %d of %d items to be kept out of it (their groups "
                    "leave too few of a class): they may be validated on, as if not marked", int(blocked.sum()), n)
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_class = np.array([strata[inverse == g].max() for g in range(len(uniq))])
    rng = np.random.default_rng([seed, 7919])
    val_groups = []
    for c in np.unique(group_class):
        members = np.flatnonzero(group_class == c)
        if len(members) < 2:
            continue
        k = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        val_groups.extend(rng.permutation(members)[:k].tolist())
    is_val = np.isin(inverse, val_groups)
    if len(np.unique(strata[is_val])) < 2:
        return np.arange(n), np.zeros(0, dtype=int)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def item_groups(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """``(N,)`` group names as strings; an item without a group (None, or an empty name) is its own
    group, ``#<position>``."""
    return np.array([f"#{i}" if groups is None or not str(groups[i]) else str(groups[i]) for i in range(n)])


def group_members(groups: np.ndarray, marked: np.ndarray | None) -> np.ndarray:
    """``(N,)`` True for the items whose group holds a ``marked`` item (``(N,)`` bool; None: none)."""
    if marked is None:
        return np.zeros(len(groups), dtype=bool)
    return np.isin(groups, groups[np.asarray(marked, dtype=bool)])


def inner_folds(labels: Sequence[int], groups: Sequence[str] | None, k: int, seed: int,
                always_fitted: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """``k`` (fitted, validation) position pairs of an inner cross-validation that chooses a setting
    (e.g. a probe's ``C``) on the rows it is given, stratified by label, never splitting a group, and
    never validating on the groups of the ``always_fitted`` rows (``(N,)`` bool: e.g. images whose
    labels or masks an encoder's pretraining read: those are in every fitted part). None when the
    other rows cannot give it: a class present in fewer than ``k`` of their groups, a single class,
    or folds of whole patients that leave a fitted part without a class (stratification by group is
    approximate). A validation part may lack a class (its AUC is then undefined). When every row is
    its own group and none is kept out, the folds are scikit-learn's ``StratifiedKFold`` over the
    rows (those of a choice made before groups were taken into account)."""
    labels = np.asarray(labels)
    n = len(labels)
    groups = item_groups(groups, n)
    blocked = group_members(groups, always_fitted)
    free = np.flatnonzero(~blocked)
    classes = np.unique(labels)
    if len(classes) < 2 or any(len(np.unique(groups[free][labels[free] == c])) < k for c in classes):
        return None
    if len(np.unique(groups[free])) == len(free):
        split = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(free)), labels[free])
    else:
        split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
            np.zeros(len(free)), labels[free], groups[free])
    out = []
    for _, validation in split:
        val = free[np.sort(validation)]
        fit = np.setdiff1d(np.arange(n), val)
        if not len(val) or len(np.unique(labels[fit])) < len(classes):
            return None
        out.append((fit, val))
    return out

"""From a :class:`~retinassl.config.DataConfig` to a manifest and its prepared (cached) images,
with train/val/test splits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retinassl.config import DataConfig
from retinassl.errors import ConfigError, DataError
from retinassl.data.cache import Cache, PreparedData
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.splits import stratified_group_split

log = logging.getLogger(__name__)


def load_manifest(config: DataConfig) -> Manifest:
    """The manifest a data config describes (a source, or a manifest CSV)."""
    if config.source == "manifest":
        if config.manifest is None:
            raise ConfigError("data.source is 'manifest' but data.manifest (a CSV path) is not set")
        return Manifest.load(config.manifest)
    from retinassl.data.sources import load_source

    return load_source(config.source, **config.options)


def prepare(config: DataConfig, preprocess: PreprocessConfig, manifest: Manifest | None = None) -> PreparedData:
    """Load (unless given) and cache the images of a data config."""
    manifest = manifest if manifest is not None else load_manifest(config)
    cache = Cache(config.cache_dir)
    return cache.prepare(manifest, preprocess, workers=max(1, config.workers), skip_bad=config.skip_bad)


@dataclass
class Splits:
    """Row indices (into the prepared data) of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def ensure_splits(prepared: PreparedData, label: str | None, seed: int,
                  fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Splits:
    """Use the manifest's ``split`` column, or make a patient-level stratified split when it is
    empty (recorded in the manifest so that the run records it)."""
    frame = prepared.manifest.frame
    splits = frame["split"].astype(str).to_numpy()
    if not np.isin(splits, ["train", "val", "test"]).any():
        labels = prepared.manifest.require_labels(label) if label else np.zeros(len(frame), dtype=int)
        n = len(frame)
        sizes = {"train": int(round(fractions[0] * n)), "val": int(round(fractions[1] * n)), "test": 0}
        splits = stratified_group_split(labels, frame["patient"].astype(str).to_numpy(), sizes, seed)
        frame["split"] = splits
        log.info("no split in the manifest: made a patient-level split %s",
                 {k: int((splits == k).sum()) for k in ("train", "val", "test")})
    out = Splits(*(np.flatnonzero(splits == k) for k in ("train", "val", "test")))
    removed = leaking_rows(prepared.manifest, [label] if label else [])
    if len(removed):
        gone = set(removed["id"].astype(str))
        ids = frame["id"].astype(str).to_numpy()
        out = Splits(np.asarray([r for r in out.train if ids[r] not in gone], dtype=np.int64),
                     np.asarray([r for r in out.val if ids[r] not in gone], dtype=np.int64), out.test)
    if len(out.train) == 0:
        raise DataError("no training images: the manifest's split column has no 'train' rows",
                        path=prepared.manifest.name)
    return out


def leaking_rows(manifest: Manifest, label_columns: list[str]) -> pd.DataFrame:
    """The training/validation rows a run must not train on (see
    :func:`retinassl.data.leakage.clean_downstream`): byte-identical copies of a test image, rows
    in a test image's ``patient`` group, byte-identical training copies with conflicting labels
    (and all but one copy with the same labels). Logged as a warning naming each row and what it
    leaks; ``(id, reason, related)`` rows (empty when there is no test split)."""
    from retinassl.data.leakage import REMOVED_COLUMNS, clean_downstream, content_digests

    frame = manifest.frame
    if not (frame["split"].astype(str) == "test").any():
        return pd.DataFrame(columns=list(REMOVED_COLUMNS))
    _, removed = clean_downstream(manifest, label_columns, content_digests(manifest))
    if len(removed):
        shown = "; ".join(f"{i} ({why}: {rel})" for i, why, rel in
                          removed[list(REMOVED_COLUMNS)].head(20).itertuples(index=False))
        more = f" and {len(removed) - 20} more" if len(removed) > 20 else ""
        log.warning("leakage check: %d training/validation image(s) dropped (they copy, or share a "
                    "patient with, a test image, or are conflicting copies): %s%s", len(removed),
                    shown, more)
    return removed


def drop_test_leaks(manifest: Manifest, rows: np.ndarray, test_rows: np.ndarray,
                    what: str = "training") -> np.ndarray:
    """``rows`` without those that are byte-identical copies of a ``test_rows`` image or share a
    ``patient`` group with one (for commands that make their own splits: semisup, segment); each
    drop is logged as a warning naming both images. Returns the kept rows (sorted as given)."""
    from retinassl.data.leakage import content_digests

    rows, test_rows = np.asarray(rows, dtype=int), np.asarray(test_rows, dtype=int)
    if len(rows) == 0 or len(test_rows) == 0:
        return rows
    frame = manifest.frame
    ids = frame["id"].astype(str).to_numpy()
    patients = frame["patient"].astype(str).to_numpy() if "patient" in frame.columns else np.full(len(frame), "")
    digests = content_digests(manifest.subset(np.concatenate([rows, test_rows])))
    by_digest: dict[str, list[str]] = {}
    for r, d in zip(test_rows, digests[len(rows):]):
        by_digest.setdefault(d, []).append(ids[r])
    test_patients: dict[str, list[str]] = {}
    for r in test_rows:
        if patients[r] and patients[r] != "nan":
            test_patients.setdefault(patients[r], []).append(ids[r])
    keep, dropped = [], []
    for r, d in zip(rows, digests[:len(rows)]):
        if d in by_digest:
            dropped.append(f"{ids[r]} (byte-identical to test {';'.join(by_digest[d])})")
        elif patients[r] in test_patients:
            dropped.append(f"{ids[r]} (same patient as test {';'.join(test_patients[patients[r]])})")
        else:
            keep.append(r)
    if dropped:
        log.warning("leakage check: %d %s image(s) dropped: %s", len(dropped), what, "; ".join(dropped[:20])
                    + (f" and {len(dropped) - 20} more" if len(dropped) > 20 else ""))
    return np.asarray(keep, dtype=int)

"""Keeping test images out of everything a transfer experiment trains on.

Two traps, both present in IDRiD (``../shared/data/idrid/SOURCE.md``):

1. **Duplicates inside the downstream dataset.** Part B holds byte-identical copies, some with
   conflicting labels (train 021 = 391, graded 1 and 2; train 118, grade 0, = test 064, grade 3),
   and further photographs of the same eye in both official splits. :func:`clean_downstream`
   drops every training copy of a test image and every training image in a test image's
   ``patient`` group (the IDRiD source links twins, copies and same-eye pairs that way), drops all
   members of a byte-identical training group whose labels disagree (there is no telling which is
   right), and keeps one member of a group whose labels agree. The official test set is never
   changed. Optionally the near-duplicate detector (:func:`retinassl.data.duplicates.find_duplicates`)
   looks for pairs nobody listed.
2. **Test images in the pretraining pool.** A self-supervised encoder that has seen the test
   images (or copies of them: IDRiD part A re-encodes 60 part-B photographs) is not evaluated on
   unseen data. :func:`clean_pool` drops pool rows that are test images, byte-identical to one,
   in a test image's ``patient`` group, or (optionally) detected as the same image or eye.

Byte identity is decided by file content (BLAKE2b digests, memoised by the image cache).
Every removal is returned with its reason, and the experiment writes them to its run directory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from retinassl.data.cache import default_cache_dir
from retinassl.data.file_digests import DigestMemo
from retinassl.data.manifest import Manifest, is_missing

log = logging.getLogger(__name__)

REMOVED_COLUMNS = ("id", "reason", "related")


def content_digests(manifest: Manifest, memo: DigestMemo | None = None) -> list[str]:
    """BLAKE2b digest of every row's image file (memoised by path, size and mtime)."""
    memo = memo or DigestMemo(default_cache_dir() / "digests.sqlite")
    return memo.digests([manifest.path(r) for r in range(len(manifest))])


def _labels_of(frame: pd.DataFrame, rows: Sequence[int], columns: Sequence[str]) -> set[tuple[str, ...]]:
    cols = [c for c in columns if c in frame.columns]
    return {tuple("" if is_missing(frame.at[r, c]) else str(frame.at[r, c]) for c in cols) for r in rows}


def _remove(manifest: Manifest, drop: dict[int, tuple[str, str]]) -> tuple[Manifest, pd.DataFrame]:
    """The manifest without the ``drop`` rows, and the table of removals (id, reason, related)."""
    ids = manifest.frame["id"].astype(str).to_numpy()
    removed = pd.DataFrame([{"id": ids[r], "reason": why, "related": rel}
                            for r, (why, rel) in sorted(drop.items())], columns=list(REMOVED_COLUMNS))
    keep = np.ones(len(ids), dtype=bool)
    keep[list(drop)] = False
    clean = manifest.subset(keep)
    clean.name = manifest.name
    return clean, removed


def clean_downstream(manifest: Manifest, label_columns: Sequence[str], digests: Sequence[str],
                     detect: bool = False, cache: object = True) -> tuple[Manifest, pd.DataFrame]:
    """Remove duplicate and leaking training rows (see the module docstring); test rows stay.

    Args:
        manifest: the downstream dataset (``split`` column; ``test`` rows are the test set, when
            there are none every row is a training candidate and only duplicates are resolved).
        label_columns: the columns whose disagreement makes a byte-identical group conflicting.
        digests: :func:`content_digests` of ``manifest``.
        detect: also run the near-duplicate detector and drop training rows paired with a test row.
        cache: the detector's fingerprint cache (see :func:`~retinassl.data.duplicates.find_duplicates`).

    Returns:
        ``(clean manifest, removed)`` where ``removed`` has columns ``id``, ``reason``, ``related``.
    """
    frame = manifest.frame
    ids = frame["id"].astype(str).to_numpy()
    is_test = (frame["split"].astype(str) == "test").to_numpy()
    drop: dict[int, tuple[str, str]] = {}
    by_digest: dict[str, list[int]] = {}
    for r, d in enumerate(digests):
        by_digest.setdefault(d, []).append(r)
    for rows in by_digest.values():
        if len(rows) < 2:
            continue
        tests = [r for r in rows if is_test[r]]
        trains = [r for r in rows if not is_test[r]]
        if tests:
            for r in trains:
                drop[r] = ("byte-identical to a test image", ";".join(ids[tests]))
            if len(_labels_of(frame, tests, label_columns)) > 1:
                log.warning("byte-identical test images with different labels kept (official test "
                            "set): %s", ", ".join(ids[tests]))
        elif len(_labels_of(frame, trains, label_columns)) > 1:
            for r in trains:
                drop[r] = ("byte-identical copies with conflicting labels",
                           ";".join(ids[[o for o in trains if o != r]]))
        else:
            for r in trains[1:]:
                drop[r] = ("byte-identical copy (same labels) of a kept image", ids[trains[0]])
    patients = frame["patient"].astype(str).to_numpy()
    test_patients: dict[str, list[str]] = {}
    for r in np.flatnonzero(is_test):
        if patients[r]:
            test_patients.setdefault(patients[r], []).append(ids[r])
    for r in np.flatnonzero(~is_test):
        if r not in drop and patients[r] in test_patients:
            drop[r] = ("same patient/eye group as a test image", ";".join(test_patients[patients[r]]))
    if detect and is_test.any():
        from retinassl.data.duplicates import find_duplicates

        pairs = find_duplicates(manifest, cache=cache)
        position = {i: r for r, i in enumerate(ids)}
        for a, b, kind in zip(pairs["id_a"], pairs["id_b"], pairs["kind"]):
            ra, rb = position[a], position[b]
            if is_test[ra] != is_test[rb]:
                train_row, test_row = (rb, ra) if is_test[ra] else (ra, rb)
                drop.setdefault(train_row, (f"detected {kind} of a test image", ids[test_row]))
    clean, removed = _remove(manifest, drop)
    if len(removed):
        log.info("downstream data: removed %d training row(s): %s", len(removed),
                 removed["reason"].value_counts().to_dict())
    return clean, removed


def clean_pool(pool: Manifest, test: Manifest, pool_digests: Sequence[str], test_digests: Sequence[str],
               detect: bool = False, cache: object = True) -> tuple[Manifest, pd.DataFrame]:
    """Drop pool rows that are, copy or show the same eye as a test image (module docstring).

    Args:
        pool: the pretraining pool (may contain the test rows themselves, e.g. all of IDRiD).
        test: the downstream test images.
        pool_digests, test_digests: :func:`content_digests` of each.
        detect: also run the near-duplicate detector on pool + test.

    Returns:
        ``(clean pool, removed)`` (columns ``id``, ``reason``, ``related``).
    """
    frame = pool.frame
    ids = frame["id"].astype(str).to_numpy()
    test_ids = set(test.frame["id"].astype(str))
    digest_to_test = {}
    for i, d in zip(test.frame["id"].astype(str), test_digests):
        digest_to_test.setdefault(d, []).append(i)
    patients = frame["patient"].astype(str).to_numpy()
    test_groups: dict[str, list[str]] = {}
    for i, p in zip(ids, patients):
        if i in test_ids and p:
            test_groups.setdefault(p, []).append(i)
    drop: dict[int, tuple[str, str]] = {}
    for r, (i, d) in enumerate(zip(ids, pool_digests)):
        if i in test_ids:
            drop[r] = ("is a test image", i)
        elif d in digest_to_test:
            drop[r] = ("byte-identical to a test image", ";".join(digest_to_test[d]))
        elif patients[r] in test_groups:
            drop[r] = ("same patient/eye group as a test image", ";".join(test_groups[patients[r]]))
    if detect:
        from retinassl.data.duplicates import find_duplicates

        keep_rows = [r for r in range(len(frame)) if r not in drop]
        rest = pool.subset(np.asarray(keep_rows, dtype=int))
        pairs = find_duplicates(Manifest.concat([test, rest]), cache=cache)
        position = {i: r for r, i in enumerate(ids)}
        for a, b, kind in zip(pairs["id_a"], pairs["id_b"], pairs["kind"]):
            if (a in test_ids) != (b in test_ids):
                other, hit = (b, a) if a in test_ids else (a, b)
                drop.setdefault(position[other], (f"detected {kind} of a test image", hit))
    clean, removed = _remove(pool, drop)
    log.info("pretraining pool: %d images kept, %d removed (%s)", len(clean), len(removed),
             removed["reason"].value_counts().to_dict() if len(removed) else {})
    return clean, removed


# -- what an encoder was pretrained on -------------------------------------------------------------
PRETRAINING_KEY = "pretraining_images"
SEEN_COLUMNS = ("test_id", "pretraining_id", "reason")


def _patient_hash(patient: object) -> str:
    """A short unsalted BLAKE2b of a patient group (comparable across machines; the group names of
    the sources are pseudonyms already, this keeps free-text names out of model.json)."""
    import hashlib

    return hashlib.blake2b(str(patient).encode("utf-8"), digest_size=8, person=b"retinassl-pt").hexdigest()


def pretraining_record(manifest: Manifest, digests: Sequence[str]) -> dict[str, list[str]]:
    """What an encoder records about its pretraining images (``model.json`` key
    :data:`PRETRAINING_KEY`): per image its id, content digest (first 32 hex digits of the BLAKE2b)
    and patient-group hash (empty when the row has no patient), so that a later evaluation can tell
    whether a test image, a byte-identical copy of it, or its patient was seen."""
    frame = manifest.frame
    patients = frame["patient"] if "patient" in frame.columns else pd.Series([""] * len(frame))
    return {"id": frame["id"].astype(str).tolist(), "digest": [str(d)[:32] for d in digests],
            "patient": ["" if is_missing(p) or not str(p) else _patient_hash(p) for p in patients]}


def seen_in_pretraining(record: dict[str, list[str]], test: Manifest,
                        test_digests: Sequence[str]) -> pd.DataFrame:
    """Test images an encoder saw in pretraining: the image itself (same id and content), a
    byte-identical copy under another name, or another image of its patient group. Returns one row
    per (test image, pretraining image) pair with columns ``test_id``, ``pretraining_id``,
    ``reason``."""
    by_digest: dict[str, list[str]] = {}
    by_patient: dict[str, list[str]] = {}
    for i, d, p in zip(record.get("id", []), record.get("digest", []), record.get("patient", [])):
        by_digest.setdefault(d, []).append(i)
        if p:
            by_patient.setdefault(p, []).append(i)
    frame = test.frame
    patients = frame["patient"] if "patient" in frame.columns else pd.Series([""] * len(frame))
    rows = []
    for test_id, digest, patient in zip(frame["id"].astype(str), test_digests, patients):
        copies = by_digest.get(str(digest)[:32], [])
        for other in copies:
            rows.append((test_id, other, "the same image" if other == test_id else "a byte-identical copy"))
        if not is_missing(patient) and str(patient):
            for other in by_patient.get(_patient_hash(patient), []):
                if other not in copies:
                    rows.append((test_id, other, "the same patient/eye group"))
    return pd.DataFrame(rows, columns=list(SEEN_COLUMNS))


def warn_seen_in_pretraining(seen: pd.DataFrame, encoder: str) -> None:
    """Log a warning naming the test images an encoder saw in pretraining and what it saw."""
    if not len(seen):
        return
    shown = "; ".join(f"test {t} = pretraining {p} ({why})"
                      for t, p, why in seen.head(20).itertuples(index=False))
    more = f" and {len(seen) - 20} more" if len(seen) > 20 else ""
    log.warning("leakage: encoder %s was pretrained on %d test image(s), copies or patients of them "
                "(its test results are optimistic): %s%s", encoder, seen["test_id"].nunique(), shown, more)

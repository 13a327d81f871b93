"""Near-duplicate and same-eye detection, to keep one photograph (or one eye) out of two splits.

Two kinds of pairs are reported:

``same_image``
    the same photograph, possibly re-encoded or resized: perceptual hashes (pHash, Zauner 2010:
    whether each of the lowest 16x16 DCT coefficients of a 64x64 grey thumbnail of the whole image
    is above their median) differ in at most ``max_distance`` of 256 bits.
``same_eye``
    a different photograph of the same eye (camera shifted, another exposure, a later visit). A
    hash compares images pixel position by pixel position, so a shift of a few percent moves it
    as far as an unrelated image. The second check compares the vessel trees instead
    (:func:`vessel_detail`: a soft-clipped black top-hat of the green channel inside the field of
    view, 96x96). Candidates are each image's ``neighbours`` nearest images by the magnitude of the
    detail image's Fourier transform (which does not change when the image shifts); a candidate
    is kept when the peak normalised cross-correlation of the two detail images over shifts up to
    20 % of the size (computed with FFTs) reaches ``min_correlation``.

Tuned on ``../shared/data/idrid`` (597 images, parts A and B), measured by
``python benchmarks/duplicates_idrid.py`` (results in ``benchmarks/results/duplicates_idrid.md``):

* reference pairs, independent of the detector: the 6 byte-identical part-B pairs of the dataset
  notes, the 61 part-A/part-B matches of ``seg_to_grading_matches.csv`` (60 ``same_image``, 1
  ``same_eye_slightly_shifted``) and the 2 pairs they imply (A IDRiD_62 = B 073 = B 375,
  A IDRiD_69 = B 028 = B 327): 69 pairs.
* pHash 16x16 (compared against pHash 8x8, dHash and wHash 8/16): all 68 same-image reference
  pairs are within 6 bits of 256, the nearest pair of different eyes is 28 bits apart on IDRiD
  (18 on DRIVE, whose 40 small images look alike), hence ``max_distance=12``. At 8x8 unrelated
  IDRiD images collide at distance 0. The shifted pair (A IDRiD_39 / B 271) is 34 bits apart:
  pHash alone cannot catch it.
* vessel correlation: same-eye pairs score >= 0.394, pairs of different eyes <= 0.214 on IDRiD
  (<= 0.21 on DRIVE), hence ``min_correlation=0.3``. Without the soft clipping the optic-disc rim
  dominated and the two groups overlapped (0.45 vs 0.44).
* result with the defaults: all 69 reference pairs found (recall 1.0, the shifted pair
  included) plus 21 further pairs, every one of them inspected by eye and the same eye
  photographed twice (listed as ``SAME_EYE_FOUND`` in :mod:`retinassl.data.sources.idrid_links`):
  0 false positives. On DRIVE and RFMiD it finds no pair. On STARE it finds one, im0235/im0236,
  which is the same eye too.
* speed: 9 ms of CPU per IDRiD image for the fingerprints (JPEGs decoded at 1/8 size; ~110
  images/s on one free core), ~770 images/s when cached (fingerprints are cached by file
  content), and under 1 s of CPU for the pair search over 597 images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image
import scipy.fft
from scipy import ndimage

from retinassl.atomic import atomic_path
from retinassl.progress import track
from retinassl.data.cache import default_cache_dir
from retinassl.data.file_digests import DigestMemo
from retinassl.data.imageio import read_image
from retinassl.data.manifest import Manifest, is_missing
from retinassl.data.field_of_view import fov_mask

log = logging.getLogger(__name__)

HASH_SIZE = 16            # pHash of 16x16 DCT coefficients: 256 bits
MAX_DISTANCE = 12         # same_image when at most this many bits differ
MIN_CORRELATION = 0.3     # same_eye when the shift-tolerant vessel correlation reaches this
NEIGHBOURS = 8            # same-eye candidates per image
DETAIL_SIZE = 96          # side of the detail image (pixels)
MAX_SHIFT = 0.2           # largest shift tried, as a fraction of DETAIL_SIZE
DECODE_MIN = 128          # JPEGs are decoded at reduced size, keeping the shorter side >= this
_DISC = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_VERSION = 2              # bump when the fingerprint computation changes (invalidates the cache)
PAIR_COLUMNS = ("id_a", "id_b", "kind", "distance", "correlation", "split_a", "split_b",
                "dataset_a", "dataset_b")


@dataclass(frozen=True)
class Fingerprints:
    """What the detector compares, one row per manifest row.

    Attributes:
        ids: manifest ids, ``N``.
        bits: ``(N, HASH_SIZE**2)`` bool pHash bits.
        spectrum: ``(N, D)`` float32 unit-norm log-magnitude spectrum of the detail image.
        detail: ``(N, DETAIL_SIZE, DETAIL_SIZE)`` float32 unit-norm detail image (zero outside
            the field of view).
    """

    ids: list[str]
    bits: np.ndarray
    spectrum: np.ndarray
    detail: np.ndarray


def _square_crop(array: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``array`` and ``fov`` to the field of view's bounding box, padded to a square."""
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    if len(rows) < 8 or len(cols) < 8:
        fov = np.ones_like(fov)
        rows, cols = np.arange(fov.shape[0]), np.arange(fov.shape[1])
    array = array[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    fov = fov[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = fov.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = ((top, side - h - top), (left, side - w - left))
    array = np.pad(array, pad + ((0, 0),) * (array.ndim - 2))
    return array, np.pad(fov, pad)


def vessel_detail(rgb: np.ndarray, size: int = DETAIL_SIZE) -> np.ndarray:
    """The detail image: a soft-clipped vessel map of the field of view, ``(size, size)`` float32.

    The image is cropped to its field of view (padded square, resized to ``size``); the black
    top-hat of the green channel (5 px disc) keeps thin dark structures, i.e. vessels and dark
    lesions. Values are soft-clipped at one standard deviation (``tanh(d / std)``) so that no
    single strong structure (the optic-disc rim, which every image has) dominates the correlation,
    then made zero-mean and unit-norm inside the eroded field of view (zero outside).
    """
    square, fov = _square_crop(rgb, fov_mask(rgb))
    green = cv2.resize(np.ascontiguousarray(square[..., 1]), (size, size),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    inside = cv2.resize(fov.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    inside = ndimage.binary_erosion(inside, iterations=4)
    detail = cv2.morphologyEx(green, cv2.MORPH_BLACKHAT, _DISC) * inside
    if inside.sum() > 1:
        detail[inside] -= detail[inside].mean()
        detail = np.tanh(detail / max(float(detail[inside].std()), 1e-6)) * inside
        detail[inside] -= detail[inside].mean()
        detail *= inside
    return (detail / max(float(np.linalg.norm(detail)), 1e-6)).astype(np.float32)


def fingerprint(rgb: np.ndarray, hash_size: int = HASH_SIZE) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """pHash bits, spectrum and detail image of one ``(H, W, 3)`` uint8 fundus image.

    Returns:
        ``(hash_size**2,)`` bool (pHash of the whole image), ``(S * (S // 2 + 1),)`` float32
        unit-norm log-magnitude spectrum of the detail image and the ``(S, S)`` float32 detail
        image (:func:`vessel_detail`), with ``S = DETAIL_SIZE``.
    """
    bits = imagehash.phash(Image.fromarray(rgb), hash_size=hash_size).hash.reshape(-1)
    detail = vessel_detail(rgb)
    spectrum = np.log1p(np.abs(np.fft.rfft2(detail * 100.0))).astype(np.float32).reshape(-1)
    spectrum -= spectrum.mean()
    spectrum /= max(float(np.linalg.norm(spectrum)), 1e-6)
    return bits.astype(bool), spectrum, detail


def _fingerprint_file(path: Path, hash_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return fingerprint(read_image(path, min_size=DECODE_MIN).array, hash_size)


def _cache_folder(cache: bool | str | Path, hash_size: int) -> Path | None:
    if cache is False:
        return None
    base = default_cache_dir() if cache is True else Path(cache)
    settings = json.dumps([_VERSION, hash_size, DETAIL_SIZE, DECODE_MIN])
    return base / "fingerprints" / hashlib.sha256(settings.encode()).hexdigest()[:12]


def _as_manifest(manifests: Manifest | Sequence[Manifest]) -> Manifest:
    if isinstance(manifests, Manifest):
        return manifests
    manifests = list(manifests)
    return manifests[0] if len(manifests) == 1 else Manifest.concat(manifests)


def compute_fingerprints(manifests: Manifest | Sequence[Manifest], hash_size: int = HASH_SIZE,
                         cache: bool | str | Path = True) -> Fingerprints:
    """Fingerprints of every image of a manifest (or of several, combined with ``Manifest.concat``).

    Args:
        manifests: one manifest or a list of them (ids must be unique across them).
        hash_size: pHash side (``hash_size**2`` bits).
        cache: ``True`` for ``$RETINASSL_CACHE``/``~/.cache/retinassl``, a folder, or ``False``.
            Entries are keyed by file content, so a moved or renamed file is still a cache hit.

    Raises:
        DataError: an unreadable image (naming the file).
    """
    manifest = _as_manifest(manifests)
    paths = [manifest.path(r) for r in range(len(manifest))]
    folder = _cache_folder(cache, hash_size)
    digests = DigestMemo(folder.parent.parent / "digests.sqlite").digests(paths) if folder else None
    rows = []
    for r in track(range(len(paths)), total=len(paths), description="fingerprints"):
        entry = folder / f"{digests[r]}.npz" if folder else None
        if entry is not None and entry.is_file():
            with np.load(entry) as stored:
                rows.append((stored["bits"], stored["spectrum"], stored["detail"]))
            continue
        bits, spectrum, detail = _fingerprint_file(paths[r], hash_size)
        rows.append((bits, spectrum, detail))
        if entry is not None:
            with atomic_path(entry) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, bits=bits, spectrum=spectrum, detail=detail)
    return Fingerprints(manifest.ids, np.stack([r[0] for r in rows]),
                        np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows]))


def hamming_matrix(bits: np.ndarray) -> np.ndarray:
    """``(N, N)`` int32 numbers of differing bits between all rows of an ``(N, B)`` bool array."""
    x = bits.astype(np.float32)
    ones = x.sum(axis=1)
    return np.rint(ones[:, None] + ones[None, :] - 2.0 * (x @ x.T)).astype(np.int32)


def shift_correlation(a: np.ndarray, b: np.ndarray, max_shift: float = MAX_SHIFT) -> np.ndarray:
    """Peak cross-correlation of detail image(s) ``b`` with ``a`` over shifts up to ``max_shift``.

    Args:
        a: ``(S, S)`` unit-norm detail image.
        b: ``(M, S, S)`` unit-norm detail images.
        max_shift: largest shift in each direction, as a fraction of ``S``.

    Returns:
        ``(M,)`` float: the largest ``sum(a * shift(b))`` over integer shifts ``|dy|, |dx| <= m``
        (1.0 for identical images, near 0 for unrelated ones).
    """
    side = a.shape[-1]
    m = int(round(max_shift * side))
    n = scipy.fft.next_fast_len(side + m, real=True)  # >= side + m: no wrap-around up to m
    shape = (n, n)
    a_hat = scipy.fft.rfft2(a.astype(np.float32), s=shape)
    b_hat = scipy.fft.rfft2(b.astype(np.float32), s=shape)
    cc = scipy.fft.irfft2(a_hat[None] * np.conj(b_hat), s=shape)
    keep = np.r_[0:m + 1, n - m:n]
    return cc[:, keep][:, :, keep].reshape(len(b), -1).max(axis=1)


def _candidates(spectrum: np.ndarray, neighbours: int) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, where ``j`` is among the nearest spectra of ``i`` or vice versa."""
    n = len(spectrum)
    k = min(neighbours, n - 1)
    pairs: set[tuple[int, int]] = set()
    if k <= 0:
        return pairs
    for start in range(0, n, 512):
        sim = spectrum[start:start + 512] @ spectrum.T
        for offset in range(len(sim)):
            sim[offset, start + offset] = -np.inf
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        for offset, row in enumerate(nearest):
            i = start + offset
            pairs.update((min(i, int(j)), max(i, int(j))) for j in row)
    return pairs


def _column(frame: pd.DataFrame, name: str, default: str) -> list[str]:
    if name not in frame.columns:
        return [default] * len(frame)
    return [default if is_missing(v) else str(v) for v in frame[name]]


def find_duplicates(manifests: Manifest | Sequence[Manifest], max_distance: int = MAX_DISTANCE,
                    same_eye: bool = True, min_correlation: float = MIN_CORRELATION,
                    neighbours: int = NEIGHBOURS, hash_size: int = HASH_SIZE,
                    cache: bool | str | Path = True,
                    fingerprints: Fingerprints | None = None) -> pd.DataFrame:
    """Pairs of images that show the same photograph (``same_image``) or the same eye (``same_eye``).

    Args:
        manifests: one manifest or several (combined with ``Manifest.concat``).
        max_distance: largest pHash Hamming distance (of ``hash_size**2`` bits) for ``same_image``.
        same_eye: also look for different photographs of the same eye (the second check).
        min_correlation: smallest shift-tolerant vessel correlation for ``same_eye``.
        neighbours: same-eye candidates examined per image.
        hash_size: pHash side.
        cache: see :func:`compute_fingerprints`.
        fingerprints: precomputed fingerprints of the same manifest (skips the image reading).

    Returns:
        A DataFrame with :data:`PAIR_COLUMNS`: ``id_a``, ``id_b`` (manifest order), ``kind``,
        ``distance`` (pHash bits), ``correlation`` (vessel correlation, NaN when not computed),
        ``split_a``, ``split_b``, ``dataset_a``, ``dataset_b`` (the ``dataset`` column, else the
        manifest's name); sorted by kind, then distance.
    """
    manifest = _as_manifest(manifests)
    prints = fingerprints or compute_fingerprints(manifest, hash_size=hash_size, cache=cache)
    distance = hamming_matrix(prints.bits)
    upper = np.triu(distance <= max_distance, k=1)
    found: dict[tuple[int, int], str] = {(int(i), int(j)): "same_image"
                                         for i, j in zip(*np.nonzero(upper))}
    correlation: dict[tuple[int, int], float] = {}
    if same_eye:
        candidates = _candidates(prints.spectrum, neighbours) | set(found)
        by_first: dict[int, list[int]] = {}
        for i, j in candidates:
            by_first.setdefault(i, []).append(j)
        for i, others in by_first.items():
            scores = shift_correlation(prints.detail[i], prints.detail[others])
            for j, score in zip(others, scores):
                correlation[(i, j)] = float(score)
                if score >= min_correlation and (i, j) not in found:
                    found[(i, j)] = "same_eye"
    frame = manifest.frame
    split = _column(frame, "split", "")
    dataset = _column(frame, "dataset", manifest.name)
    rows = [{"id_a": prints.ids[i], "id_b": prints.ids[j], "kind": kind,
             "distance": int(distance[i, j]), "correlation": correlation.get((i, j), np.nan),
             "split_a": split[i], "split_b": split[j], "dataset_a": dataset[i],
             "dataset_b": dataset[j]} for (i, j), kind in found.items()]
    pairs = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    pairs = pairs.sort_values(["kind", "distance", "correlation"], ascending=[True, True, False])
    return pairs.reset_index(drop=True)


def leakage_report(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs of :func:`find_duplicates` that cross splits or datasets, with a ``problem``
    column (``"train/test"``-style split crossings, ``"dataset a/b"`` crossings, or both).

    Pairs where either split is empty (not yet assigned) count as crossing only datasets.
    """
    problems = []
    for row in pairs.itertuples(index=False):
        parts = []
        if row.split_a and row.split_b and row.split_a != row.split_b:
            parts.append(f"{row.split_a}/{row.split_b}")
        if row.dataset_a != row.dataset_b:
            parts.append(f"dataset {row.dataset_a}/{row.dataset_b}")
        problems.append(", ".join(parts))
    report = pairs.assign(problem=problems)
    return report[report["problem"] != ""].reset_index(drop=True)


def duplicate_groups(pairs: pd.DataFrame, ids: Sequence[str]) -> dict[str, str]:
    """id -> group: images connected by any pair share a group (named after the group's first id
    in ``ids`` order); a patient-level split can use it as an extra grouping."""
    order = {item: n for n, item in enumerate(ids)}
    parent = {item: item for item in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(pairs["id_a"], pairs["id_b"]):
        ra, rb = find(a), find(b)
        if ra != rb:
            first, second = sorted((ra, rb), key=order.__getitem__)
            parent[second] = first
    return {item: find(item) for item in ids}

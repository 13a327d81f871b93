"""Content-addressed on-disk cache of preprocessed images and masks.

An entry is keyed by the *content* of the image file (BLAKE2b digest) and by the geometric part of
the :class:`PreprocessConfig`, so renaming or copying a dataset reuses its entries, and a changed
file or setting never returns stale pixels. Layout::

    <cache>/<config key>/<digest[:2]>/<digest>/image.npy      uint8 (S, S, C)
                                              fov.npy        bool  (S, S)
                                              mask-<mask digest>.npy  bool (S, S)
                                              entry.json     geometry and pixel statistics;
                                                             written last: marks the entry complete

Every file is written atomically, so a process killed mid-write leaves no corrupt entry; a rerun
completes the cache. Arrays are read memory-mapped, so a second epoch decodes no image and a
dataset larger than memory streams from disk.

File digests are memoised in ``<cache>/digests.sqlite`` (:mod:`retinassl.data.file_digests`), so later
runs do not re-read unchanged files to hash them.

Entries are verified when they are used (:class:`~retinassl.data.cache_entry.CacheEntry`): ``entry.json``
records the shape, dtype and byte size of every array, so a truncated or replaced ``.npy`` file (a full
disk, a copy cut short) is rebuilt by :meth:`Cache.prepare` (with a warning naming the entry and its
image) and is a :class:`~retinassl.errors.DataError` naming both when read, never a raw numpy error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinassl.atomic import atomic_path, write_text
from retinassl.errors import DataError
from retinassl.progress import track
from retinassl.data.imageio import read_image, read_mask
from retinassl.data.limits import check_budget, check_image_shape, preprocess_cost
from retinassl.data.manifest import MASK_COLUMNS, Manifest
from retinassl.data.cache_entry import CacheEntry, array_problem, array_record
from retinassl.data.field_of_view import Geometry, apply_geometry, fov_mask
from retinassl.data.file_digests import DigestMemo
from retinassl.data.preprocess import PreprocessConfig, compute_geometry, process_pixels

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$RETINASSL_CACHE`` or ``~/.cache/retinassl``."""
    env = os.environ.get("RETINASSL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "retinassl"


@dataclass
class PreparedData:
    """A manifest whose images are all in the cache, row for row.

    Attributes:
        manifest: the rows that were prepared (bad rows removed when ``skip_bad``).
        entries: one :class:`CacheEntry` per manifest row.
        config: the preprocessing used.
        skipped: ``(id, problem)`` of every row left out because it could not be read.
    """

    manifest: Manifest
    entries: list[CacheEntry]
    config: PreprocessConfig
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def subset(self, rows: Sequence[int] | np.ndarray) -> PreparedData:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return PreparedData(self.manifest.subset(rows), [self.entries[int(i)] for i in rows],
                            self.config, list(self.skipped))


@dataclass(frozen=True)
class _Job:
    row: int
    item: str
    image: Path
    digest: str
    masks: tuple[tuple[str, Path, str], ...]  # (column, path, digest)
    fov_column: Path | None


class Cache:
    """The on-disk cache (see the module docstring).

    Args:
        directory: where entries live; defaults to :func:`default_cache_dir`.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.memo = DigestMemo(self.directory / "digests.sqlite")

    def entry_dir(self, digest: str, config: PreprocessConfig) -> Path:
        return self.directory / config.cache_key() / digest[:2] / digest

    def prepare(self, manifest: Manifest, config: PreprocessConfig, workers: int = 1,
                skip_bad: bool = False, mask_columns: Sequence[str] | None = None,
                description: str = "preprocessing") -> PreparedData:
        """Make sure every image (and its masks) of ``manifest`` is in the cache.

        Args:
            manifest: the images.
            config: preprocessing.
            workers: processes decoding in parallel.
            skip_bad: leave out rows whose files cannot be read (listed in ``skipped``) instead of
                raising; entries already written are kept either way.
            mask_columns: mask columns to cache (default: every mask column the manifest has).

        Raises:
            DataError: the first unreadable row (file, row and problem), unless ``skip_bad``.
        """
        columns = [c for c in (mask_columns if mask_columns is not None else MASK_COLUMNS)
                   if c in manifest.frame.columns]
        jobs, skipped, bad_rows = self._jobs(manifest, columns, skip_bad)
        pending = [j for j in jobs if not self._complete(j, config)]
        failures: dict[int, str] = {}
        if pending:
            memory, disk = preprocess_cost(len(pending), config.size, config.channels,
                                           n_masks=max(len(j.masks) for j in pending), workers=workers)
            check_budget(f"preprocessing {len(pending)} images at {config.size} px",
                         "preprocess.size (or the number of images, or data.workers)",
                         memory=memory, disk=disk, disk_path=self.directory)
            log.info("%s %d of %d images into %s", description, len(pending), len(jobs),
                     self.directory)
            if workers > 1 and len(pending) > 1:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    results = pool.map(_build_entry_safe, pending, [config] * len(pending),
                                       [self] * len(pending), chunksize=4)
                    for job, problem in zip(pending, track(results, len(pending), description)):
                        if problem:
                            failures[job.row] = problem
            else:
                for job in track(pending, len(pending), description):
                    problem = _build_entry_safe(job, config, self)
                    if problem:
                        failures[job.row] = problem
        if failures and not skip_bad:
            row = min(failures)
            raise DataError(failures[row], row=row, item=manifest.frame.at[row, "id"],
                            path=manifest.name)
        keep, entries = [], []
        for job in jobs:
            if job.row in failures:
                skipped.append((job.item, failures[job.row]))
                continue
            keep.append(job.row)
            entries.append(CacheEntry(
                self.entry_dir(job.digest, config),
                {column: f"mask-{digest}.npy" for column, _, digest in job.masks}, str(job.image)))
        if skipped:
            log.warning("skipped %d unreadable item(s): %s", len(skipped),
                        "; ".join(f"{i}: {p}" for i, p in skipped[:5]))
        prepared_manifest = manifest.subset(np.asarray(keep, dtype=int)) if bad_rows or failures \
            else manifest
        return PreparedData(prepared_manifest, entries, config, skipped)

    def _jobs(self, manifest: Manifest, columns: Sequence[str],
              skip_bad: bool) -> tuple[list[_Job], list[tuple[str, str]], bool]:
        frame = manifest.frame
        paths: list[Path] = []
        refs: list[tuple[int, str]] = []  # (row, column) for each path
        skipped: list[tuple[str, str]] = []
        rows_ok: list[int] = []
        for r in range(len(frame)):
            row_paths = [("image", manifest.path(r, "image"))]
            row_paths += [(c, manifest.path(r, c)) for c in columns]
            missing = [(c, p) for c, p in row_paths if p is not None and not p.is_file()]
            if missing:
                problem = f"{missing[0][0]} file does not exist: {missing[0][1]}"
                if not skip_bad:
                    raise DataError(problem, path=manifest.name, row=r, item=frame.at[r, "id"])
                skipped.append((str(frame.at[r, "id"]), problem))
                continue
            rows_ok.append(r)
            for c, p in row_paths:
                if p is not None:
                    paths.append(p)
                    refs.append((r, c))
        digests = self.memo.digests(paths)
        by_row: dict[int, dict[str, tuple[Path, str]]] = {}
        for (r, c), p, d in zip(refs, paths, digests):
            by_row.setdefault(r, {})[c] = (p, d)
        jobs = []
        for r in rows_ok:
            found = by_row[r]
            image_path, image_digest = found["image"]
            masks = tuple((c, p, d) for c, (p, d) in found.items()
                          if c != "image" and c != "mask_fov")
            fov = found.get("mask_fov")
            if fov is not None:
                # The FOV mask changes the geometry, so it is part of the entry's identity.
                image_digest = hashlib.blake2b(f"{image_digest}+fov{fov[1]}".encode(),
                                               digest_size=16).hexdigest()
            jobs.append(_Job(r, str(manifest.frame.at[r, "id"]), image_path, image_digest, masks,
                             None if fov is None else fov[0]))
        return jobs, skipped, bool(skipped)

    def _complete(self, job: _Job, config: PreprocessConfig) -> bool:
        """Whether the entry of ``job`` is complete and intact. A corrupt file (see
        :func:`~retinassl.data.cache_entry.array_problem`) is removed, with a warning naming the
        entry and its image, so that the entry is rebuilt (its ``entry.json`` too when the image or
        FOV is at fault)."""
        d = self.entry_dir(job.digest, config)
        if not (d / "entry.json").is_file():
            return False
        try:
            records = json.loads((d / "entry.json").read_text()).get("arrays", {})
        except (OSError, ValueError):
            records, bad = {}, ["entry.json"]
        else:
            bad = [name for name in ("image.npy", "fov.npy")
                   if array_problem(d / name, records.get(name)) is not None]
        if bad:
            log.warning("cache entry %s (made from %s) is corrupt (%s); rebuilding it", d, job.image,
                        ", ".join(bad))
            (d / "entry.json").unlink(missing_ok=True)
            return False
        complete = True
        for _, path, digest in job.masks:
            mask = d / f"mask-{digest}.npy"
            if not mask.is_file():
                complete = False
            elif array_problem(mask, records.get("fov.npy")) is not None:
                log.warning("cache entry %s: mask %s (made from %s) is corrupt; rebuilding it", d,
                            mask.name, path)
                mask.unlink(missing_ok=True)
                complete = False
        return complete


def _build_entry_safe(job: _Job, config: PreprocessConfig, cache: Cache) -> str | None:
    """Build one entry; return the problem text instead of raising (for worker processes)."""
    try:
        _build_entry(job, config, cache)
    except DataError as exc:
        return str(exc)
    return None


def _build_entry(job: _Job, config: PreprocessConfig, cache: Cache) -> None:
    directory = cache.entry_dir(job.digest, config)
    entry_file = directory / "entry.json"
    if entry_file.is_file():
        geometry = Geometry.from_json(json.dumps(json.loads(entry_file.read_text())["geometry"]))
    else:
        decoded = read_image(job.image, min_size=config.size, grayscale=config.channels == 1)
        check_image_shape(decoded.original_size, job.image)
        image = decoded.array
        if job.fov_column is not None:
            fov_full = read_mask(job.fov_column, expected_size=decoded.original_size)
            fov = _resize_mask(fov_full, image.shape[:2])
        else:
            fov = fov_mask(image, config.fov_threshold, config.fov_background)
        geometry = compute_geometry(fov, decoded.scale, decoded.original_size, config, job.image)
        out = apply_geometry(image, geometry, scale=decoded.scale)
        out_fov = apply_geometry(fov, geometry, scale=decoded.scale, is_mask=True)
        out = process_pixels(out, out_fov, geometry, config)
        if config.mask_outside_fov:
            out = out * (out_fov[..., None] if out.ndim == 3 else out_fov).astype(np.uint8)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "image.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(out))
        with atomic_path(directory / "fov.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out_fov)
        write_text(entry_file, json.dumps({"geometry": json.loads(geometry.to_json()),
                                           "stats": pixel_stats(out, out_fov),
                                           "arrays": {"image.npy": array_record(out),
                                                      "fov.npy": array_record(out_fov)}}))
    for _column, path, digest in job.masks:
        target = directory / f"mask-{digest}.npy"
        if target.is_file():
            continue
        mask = read_mask(path, expected_size=geometry.original_size)
        out_mask = apply_geometry(mask, geometry, is_mask=True)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out_mask)


def pixel_stats(image: np.ndarray, fov: np.ndarray) -> dict[str, float | list[float]]:
    """Maximum, per-channel mean and standard deviation of ``image`` inside ``fov``."""
    import cv2

    mask = fov.astype(np.uint8) if fov.any() else None
    mean, std = cv2.meanStdDev(image, mask=mask)
    return {"max": float(image.max()), "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``shape`` (H, W)."""
    if mask.shape == shape:
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]),
                      interpolation=cv2.INTER_NEAREST).astype(bool)

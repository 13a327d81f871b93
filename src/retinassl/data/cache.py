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

File digests are memoised in ``<cache>/digests.sqlite`` by (path, size, mtime), so later runs do
not re-read unchanged files to hash them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_text
from ..errors import DataError
from ..progress import track
from .imageio import read_image, read_mask
from .manifest import MASK_COLUMNS, Manifest, is_missing
from .preprocess import (Geometry, PreprocessConfig, apply_geometry, compute_geometry, fov_mask,
                         process_pixels)

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$RETINASSL_CACHE`` or ``~/.cache/retinassl``."""
    env = os.environ.get("RETINASSL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "retinassl"


def file_digest(path: str | Path) -> str:
    """BLAKE2b-128 hex digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DigestMemo:
    """Remembers file digests by (absolute path, size, mtime) in a small SQLite table."""

    def __init__(self, database: Path) -> None:
        self.database = database

    def _connect(self) -> sqlite3.Connection:
        self.database.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.database, timeout=60)
        con.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, "
                    "mtime INTEGER, digest TEXT)")
        return con

    def digests(self, paths: Sequence[Path]) -> list[str]:
        """Digest of every path, hashing only files that changed since they were last seen."""
        stats = []
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                raise DataError("file does not exist", path=p) from None
            stats.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
        with self._connect() as con:
            known = {}
            for i in range(0, len(stats), 500):
                chunk = [s[0] for s in stats[i:i + 500]]
                rows = con.execute(
                    f"SELECT path, size, mtime, digest FROM digests WHERE path IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                known.update({r[0]: r[1:] for r in rows})
            out, new = [], []
            for (path, size, mtime) in stats:
                hit = known.get(path)
                if hit is not None and hit[0] == size and hit[1] == mtime:
                    out.append(hit[2])
                else:
                    digest = file_digest(path)
                    out.append(digest)
                    new.append((path, size, mtime, digest))
            if new:
                con.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", new)
        return out


@dataclass(frozen=True)
class CacheEntry:
    """One preprocessed image (and its masks) in the cache."""

    directory: Path
    masks: dict[str, str] = field(default_factory=dict)  # manifest column -> mask file name

    def image(self) -> np.ndarray:
        """``(S, S, C)`` uint8, memory-mapped."""
        return np.load(self.directory / "image.npy", mmap_mode="r")

    def fov(self) -> np.ndarray:
        """``(S, S)`` bool, memory-mapped."""
        return np.load(self.directory / "fov.npy", mmap_mode="r")

    def mask(self, column: str) -> np.ndarray | None:
        """``(S, S)`` bool for a mask column, or None when the row has no such mask."""
        name = self.masks.get(column)
        if name is None:
            return None
        return np.load(self.directory / name, mmap_mode="r")

    def _meta(self) -> dict:
        return json.loads((self.directory / "entry.json").read_text())

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_json(json.dumps(self._meta()["geometry"]))

    @property
    def stats(self) -> dict[str, list[float] | float]:
        """Pixel statistics inside the FOV: ``max`` (over channels), per-channel ``mean``, ``std``."""
        return self._meta()["stats"]


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
                {column: f"mask-{digest}.npy" for column, _, digest in job.masks}))
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
        d = self.entry_dir(job.digest, config)
        if not (d / "entry.json").is_file():
            return False
        return all((d / f"mask-{digest}.npy").is_file() for _, _, digest in job.masks)


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
        image = decoded.array
        if job.fov_column is not None:
            fov_full = read_mask(job.fov_column, expected_size=decoded.original_size)
            fov = _resize_mask(fov_full, image.shape[:2])
        else:
            fov = fov_mask(image, config.fov_threshold)
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
                                           "stats": pixel_stats(out, out_fov)}))
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

"""The data of a patch-method run: the labelled image set, its train/val/test split, the nested
labelled subsets, an optional pool of extra unlabelled images, and their patch banks.

``data.source: idrid-ssl-gan`` is the 249-image IDRiD set of Lecouat et al. 2018
(:func:`retinassl.data.sources.idrid.idrid_ssl_gan_set`); any other name is a dataset source
(:func:`retinassl.data.sources.load_source`) or ``manifest``. The pool ``idrid-dr-pool`` is the
part-B DR images that show none of the labelled set's images (same photograph, byte copy or same
eye, by the dataset's match table, its duplicate lists and the near-duplicate detector:
:func:`retinassl.data.sources.idrid.idrid_dr_pool`), so no test image (nor any other image of the
set) reaches training through the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from retinassl.config import DataConfig
from retinassl.data.cache import PreparedData
from retinassl.data.loading import drop_test_leaks, load_manifest, prepare
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.splits import nested_subsets, stratified_group_split
from retinassl.errors import DataError
from retinassl.jobs.patch_config import PatchConfig, PoolConfig, SplitConfig
from retinassl.data.patch_bank import PatchBank, build_patch_bank

log = logging.getLogger(__name__)

LABEL = "abnormal"


def load_labelled_set(data: DataConfig) -> Manifest:
    """The manifest of the labelled image set a data config names."""
    if data.source == "idrid-ssl-gan":
        from retinassl.data.sources.idrid import idrid_ssl_gan_set

        return idrid_ssl_gan_set(**data.options)
    return load_manifest(data)


def load_pool(pool: PoolConfig, exclude: Manifest, seed: int = 0) -> Manifest:
    """The extra unlabelled images (see :class:`PoolConfig`), never any image of ``exclude``."""
    if pool.source == "idrid-dr-pool":
        from retinassl.data.sources.idrid import idrid_dr_pool

        manifest = idrid_dr_pool(exclude=exclude, **pool.options)
    else:
        from retinassl.data.sources import load_source

        manifest = load_source(pool.source, **pool.options)
        excluded = {exclude.path(r).resolve() for r in range(len(exclude))}
        keep = np.array([manifest.path(r).resolve() not in excluded for r in range(len(manifest))])
        manifest = manifest.subset(keep)
    if pool.max_images and len(manifest) > pool.max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(manifest), pool.max_images, replace=False))
        manifest = manifest.subset(keep)
    return manifest


@dataclass
class PatchData:
    """Prepared images, the split (rows of ``prepared``), the pool and a cache of patch banks."""

    prepared: PreparedData
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    patches: PatchConfig
    pool: PreparedData | None = None
    _banks: dict[tuple[str, int, int], PatchBank] = field(default_factory=dict, repr=False)

    def labels(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Image labels (0/1 ``abnormal``) of ``rows``."""
        return self.prepared.manifest.require_labels(LABEL)[np.asarray(rows, dtype=int)].astype(int)

    def pool_labels(self) -> np.ndarray:
        """Image labels (0/1 ``abnormal``) of the pool's images."""
        if self.pool is None:
            raise DataError("no unlabelled pool was loaded")
        return self.pool.manifest.require_labels(LABEL).astype(int)

    def ids(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.prepared.manifest.frame["id"].to_numpy()[np.asarray(rows, dtype=int)]

    def labelled_subsets(self, counts: Sequence[int], seed: int) -> dict[int, np.ndarray]:
        """Nested stratified labelled subsets: count -> positions into :attr:`train`."""
        counts = [min(int(c), len(self.train)) for c in counts]
        return nested_subsets(self.labels(self.train), counts, seed)

    def bank(self, which: str, patch_size: int, margin: int = 0) -> PatchBank:
        """Patch bank of ``train``, ``val``, ``test`` (labelled) or ``pool`` (unlabelled) images,
        built on first use."""
        key = (which, patch_size, margin)
        if key not in self._banks:
            grid, min_pixels = self.patches.grid, self.patches.min_pixels
            if which == "pool":
                if self.pool is None:
                    raise DataError("no unlabelled pool was loaded")
                bank = build_patch_bank(self.pool, np.arange(len(self.pool)), grid, patch_size,
                                        margin, labelled=False)
            else:
                rows = {"train": self.train, "val": self.val, "test": self.test}[which]
                bank = build_patch_bank(self.prepared, rows, grid, patch_size, margin,
                                        labelled=True, min_pixels=min_pixels)
            log.info("patch bank %s: %d images, %d patches of %d px (+%d margin)", which,
                     bank.n_images, len(bank), patch_size, margin)
            self._banks[key] = bank
        return self._banks[key]


def split_rows(manifest: Manifest, split: SplitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test rows: stratified by ``abnormal``, grouped by ``patient``."""
    frame = manifest.frame
    labels = manifest.require_labels(LABEL).astype(int)
    if split.train + split.val >= len(frame):
        raise DataError(f"a split of {split.train} train + {split.val} val images leaves no test "
                        f"image among {len(frame)}", path=manifest.name)
    names = stratified_group_split(labels, frame["patient"].astype(str).to_numpy(),
                                   {"train": split.train, "val": split.val, "test": 0}, split.seed)
    return tuple(np.flatnonzero(names == k) for k in ("train", "val", "test"))  # type: ignore[return-value]


def load_patch_data(data: DataConfig, preprocess: PreprocessConfig, split: SplitConfig,
                    patches: PatchConfig, pool: PoolConfig | None = None) -> PatchData:
    """Load, cache and split the labelled set (and the pool, when given)."""
    manifest = load_labelled_set(data)
    prepared = prepare(data, preprocess, manifest=manifest)
    if prepared.skipped:
        raise DataError(f"{len(prepared.skipped)} image(s) could not be read (first: "
                        f"{prepared.skipped[0]}); the patch experiment needs every image")
    train, val, test = split_rows(prepared.manifest, split)
    # patient groups never cross the split; copies under another patient name may
    train = drop_test_leaks(prepared.manifest, train, test, "training")
    val = drop_test_leaks(prepared.manifest, val, test, "validation")
    log.info("split: %d train (%d abnormal), %d val, %d test (%d abnormal)", len(train),
             int(prepared.manifest.require_labels(LABEL)[train].sum()), len(val), len(test),
             int(prepared.manifest.require_labels(LABEL)[test].sum()))
    pool_prepared = None
    if pool is not None:
        pool_manifest = load_pool(pool, prepared.manifest, split.seed)
        pool_prepared = prepare(data, preprocess, manifest=pool_manifest)
        log.info("unlabelled pool: %d images (%s)", len(pool_prepared), pool.source)
    return PatchData(prepared, train, val, test, patches, pool_prepared)

"""The training data order: a sampler whose permutation is a function of (seed, epoch), sharded
over DDP ranks, that can skip the batches a resumed run has done; and the loader Lightning saves and
restores the position of."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation drawn from (seed, epoch), sharded over DDP ranks.

    Like ``DistributedSampler`` it pads the permutation (by repeating its start) to a multiple of
    the world size, so every rank sees the same number of samples; with a world size dividing the
    dataset size, each sample is seen exactly once per epoch.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.rank = 0
        self.world_size = 1
        self._skip: tuple[int, int] | None = None  # (epoch, samples to skip) after a resume

    def set_epoch(self, epoch: int) -> None:
        if self._skip is not None and self._skip[0] != epoch:
            self._skip = None
        self.epoch = epoch

    def set_distributed(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def skip(self, epoch: int, samples: int) -> None:
        """Make the next iteration of ``epoch`` start after ``samples`` of this rank's samples."""
        self.epoch = epoch
        self._skip = (epoch, samples)

    def _per_rank(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __len__(self) -> int:
        return self._per_rank()

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch``."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        total = self._per_rank() * self.world_size
        if total > self.size:
            order = np.concatenate([order, order[: total - self.size]])
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        start = 0
        if self._skip is not None and self._skip[0] == epoch:
            start = self._skip[1]
            self._skip = None
        yield from (int(i) for i in self.indices(epoch)[start:])


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning saves and restores
    (Lightning calls ``state_dict``/``load_state_dict`` on stateful loaders)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = False, num_workers: int = 0,
                 collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.epoch_sampler = EpochSampler(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=self.epoch_sampler,
                         drop_last=drop_last, num_workers=num_workers, collate_fn=collate_fn,
                         persistent_workers=False)
        self.position: tuple[int, int] = (0, 0)  # (epoch, batches done), set before each save

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.position
        return {"epoch": epoch, "batches_done": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches_done"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.epoch_sampler.skip(epoch, batches * self.batch_size)  # type: ignore[operator]

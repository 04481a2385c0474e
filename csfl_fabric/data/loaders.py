"""Per-client `DataLoader`s, created lazily and kept in a bounded LRU cache (the store's ``dataloader`` mode).

For data served by worker processes (decoding, augmentation, files that do not fit in memory): at most
``max_cached_loaders`` loaders, and so at most that many times ``num_workers`` worker processes, exist at
once; an evicted or released loader is recreated on its client's next use. The batch sampler draws the same
index batches as the tensor path (`batch_indices`), so both modes give identical batches for the same
``(seed, round, client)``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


def batch_indices(indices: Tensor, seed: int, batch_size: int, epochs: int, steps: int | None) -> Iterator[Tensor]:
    """Index batches of one client's local training: each epoch a fresh permutation seeded by ``seed``.

    Yields ``steps`` batches if given (cycling through epochs), else ``epochs`` passes; the last partial batch
    of an epoch is kept.

    >>> [b.tolist() for b in batch_indices(torch.tensor([10, 11, 12]), seed=0, batch_size=2, epochs=1, steps=None)]
    [[12, 10], [11]]
    """
    n = len(indices)
    if n == 0 or steps == 0:
        return
    # CPU generator: CUDA generators differ by device and PyTorch version; the permutation is tiny anyway.
    generator = torch.Generator().manual_seed(seed)
    yielded = 0
    for _ in itertools.count() if steps is not None else range(epochs):
        # index_select and no slice of a one-batch epoch: ~17 instead of ~25 us a client, which the cohort
        # trainer pays for every client of a chunk before training it.
        order = indices.index_select(0, torch.randperm(n, generator=generator).to(indices.device))
        for start in range(0, n, batch_size):
            if yielded == steps:
                return
            yield order if n <= batch_size else order[start : start + batch_size]
            yielded += 1


class _Samples(Dataset):
    """Sample ``i`` of the store's tensors (a global index, as the batch sampler yields them)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


class _SeededBatches:
    """A batch sampler whose plan (seed, batch size, epochs, steps) is set before each pass."""

    def __init__(self, indices: Tensor) -> None:
        self.indices = indices
        self.plan: tuple[int, int, int, int | None] = (0, 1, 1, None)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in batch_indices(self.indices, *self.plan):
            yield idx.tolist()


class ClientLoader:
    """One client's `DataLoader` over the shared tensors; batches are moved to ``device``."""

    def __init__(self, x: Tensor, y: Tensor, indices: Tensor, num_workers: int, device: torch.device) -> None:
        self.sampler = _SeededBatches(indices)
        # Persistent workers: a cached loader keeps its processes instead of forking new ones every round.
        self.loader = DataLoader(_Samples(x, y), batch_sampler=self.sampler, num_workers=num_workers,  # type: ignore[arg-type]
                                 persistent_workers=num_workers > 0, pin_memory=device.type == "cuda")
        self.device = device

    def batches(self, seed: int, batch_size: int, epochs: int, steps: int | None) -> Iterator[tuple[Tensor, Tensor]]:
        """The same batches as `ClientData.batches` in tensor mode, for the same arguments."""
        self.sampler.plan = (seed, batch_size, epochs, steps)
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class LoaderCache:
    """At most ``max_size`` `ClientLoader`s, least recently used evicted first, made by ``make(client_id)``."""

    def __init__(self, make: Callable[[int], ClientLoader], max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"Expected `max_cached_loaders` >= 1 but got {max_size}.")
        self.make = make
        self.max_size = max_size
        self._loaders: OrderedDict[int, ClientLoader] = OrderedDict()
        self.created = 0

    def __len__(self) -> int:
        return len(self._loaders)

    def get(self, client_id: int) -> ClientLoader:
        """The client's loader, created (and the least recently used one evicted) if it is not cached."""
        if client_id in self._loaders:
            self._loaders.move_to_end(client_id)
            return self._loaders[client_id]
        while len(self._loaders) >= self.max_size:
            self._loaders.popitem(last=False)  # dropping a loader ends its persistent workers
        loader = self._loaders[client_id] = self.make(client_id)
        self.created += 1
        return loader

    def clear(self) -> None:
        """Drop every cached loader (and its worker processes); they are recreated on demand."""
        self._loaders.clear()

"""`ClientStore`: the train tensors held once, and each client as an index tensor into them.

Memory is O(1) in the number of clients: no per-client copies, no `DataLoader`, no worker processes.
Batches are ``index_select`` slices of the shared tensors, in an order seeded from
``(seed, round_idx, client_id)`` alone, so they do not depend on the order in which clients are trained
or on which process trains them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A 63-bit seed that depends only on ``(seed, round_idx, client_id)``; nearby triples give unrelated streams.

    SplitMix64 chained over the triple: ~50x cheaper than a ``SeedSequence`` and this runs once per client.

    >>> _client_seed(0, 1, 2) == _client_seed(0, 1, 2) != _client_seed(0, 2, 1)
    True
    """
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ round_idx) ^ client_id) >> 1


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's view of the store in one round: shared tensors plus the client's indices.

    Attributes:
        client_id: the client.
        num_samples: how many samples the client holds.
        x: the store's shared inputs (not a copy).
        y: the store's shared labels (not a copy).
        indices: int64 indices of the client's samples, on the same device as ``x``.
        seed: seed of the CPU generator that orders the batches.
    """

    client_id: int
    num_samples: int
    x: Tensor
    y: Tensor
    indices: Tensor
    seed: int

    def batches(self, batch_size: int, *, epochs: int = 1, steps: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` mini-batches, each epoch in a fresh random order; the last partial batch is kept.

        Calling this twice yields the same batches: the order comes from a generator seeded with ``seed``.

        Args:
            batch_size: samples per batch, >= 1.
            epochs: passes over the client's data (ignored when ``steps`` is given), >= 0.
            steps: if given, yield exactly this many batches, cycling through fresh epochs as needed.

        Yields:
            Batches of inputs and labels on the store's device. A client with no samples yields nothing.
        """
        for idx in self.batch_indices(batch_size, epochs=epochs, steps=steps):
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def batch_indices(self, batch_size: int, *, epochs: int = 1, steps: int | None = None) -> Iterator[Tensor]:
        """The rows of ``x`` and ``y`` that `batches` yields, batch by batch (same arguments, same order).

        The cohort trainer gathers many clients' batches at once from these; both trainers thus see
        identical batches.
        """
        if batch_size < 1:
            raise ValueError(f"Expected `batch_size` >= 1 but got {batch_size}.")
        if steps is not None and steps < 0:
            raise ValueError(f"Expected `steps` >= 0 or None but got {steps}.")
        if epochs < 0:
            raise ValueError(f"Expected `epochs` >= 0 but got {epochs}.")
        if self.num_samples == 0 or steps == 0:
            return
        # CPU generator: CUDA generators differ by device and PyTorch version; the permutation is tiny anyway.
        generator = torch.Generator().manual_seed(self.seed)
        yielded = 0
        for _ in itertools.count() if steps is not None else range(epochs):
            order = self.indices[torch.randperm(self.num_samples, generator=generator).to(self.indices.device)]
            for start in range(0, self.num_samples, batch_size):
                if yielded == steps:
                    return
                yield order[start : start + batch_size]
                yielded += 1

    def arrays(self) -> tuple[Tensor, Tensor]:
        """All of the client's samples, in index order (a copy of this client's rows only)."""
        return self.x.index_select(0, self.indices), self.y.index_select(0, self.indices)


class ClientStore:
    """The train set held once on ``device``, and one int64 index tensor per client.

    Args:
        x: inputs of all clients, first dimension = samples.
        y: labels, same first dimension as ``x``.
        client_indices: one index array into ``x`` per client (e.g. a partitioner's output).
        seed: run seed; with the round and client it seeds each client's batch order.
        device: where the tensors live; they are moved there once, here.

    >>> store = ClientStore(torch.arange(6.0), torch.arange(6), [np.array([0, 1, 2]), np.array([3, 4, 5])], seed=0)
    >>> store.num_samples.tolist()
    [3, 3]
    >>> batches = [xb.tolist() for xb, _ in store.client(1, round_idx=0).batches(2)]
    >>> [len(b) for b in batches], sorted(sum(batches, []))
    ([2, 1], [3.0, 4.0, 5.0])
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        client_indices: Sequence[np.ndarray],
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Expected `x` and `y` with the same number of samples but got {x.shape[0]} and {y.shape[0]}."
            )
        if seed < 0:
            raise ValueError(f"Expected `seed` >= 0 but got {seed}.")
        self.device = torch.device(device)
        self.seed = int(seed)
        # `.to` returns the tensor itself when it is already there, so the CPU case copies nothing.
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        arrays = [np.asarray(ix, dtype=np.int64).reshape(-1) for ix in client_indices]
        for client_id, ix in enumerate(arrays):
            if ix.size and (ix.min() < 0 or ix.max() >= x.shape[0]):
                raise ValueError(f"Client {client_id} has indices outside [0, {x.shape[0]}).")
        self._num_samples = np.array([ix.size for ix in arrays], dtype=np.int64)
        self._indices = [torch.from_numpy(ix).to(self.device) for ix in arrays]

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self._indices)

    @property
    def num_samples(self) -> np.ndarray:
        """Samples per client (int64; a copy, so callers cannot change the store)."""
        return self._num_samples.copy()

    def client(self, client_id: int, round_idx: int) -> ClientData:
        """The data of ``client_id`` for round ``round_idx``; the single way clients get their data."""
        if not 0 <= client_id < self.num_clients:
            raise ValueError(f"Expected `client_id` in [0, {self.num_clients}) but got {client_id}.")
        if round_idx < 0:
            raise ValueError(f"Expected `round_idx` >= 0 but got {round_idx}.")
        return ClientData(
            client_id=int(client_id),
            num_samples=int(self._num_samples[client_id]),
            x=self.x,
            y=self.y,
            indices=self._indices[client_id],
            seed=_client_seed(self.seed, int(round_idx), int(client_id)),
        )

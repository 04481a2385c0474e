"""`ClientStore`: the train tensors held once, and each client as an index tensor into them.

Memory is O(1) in the number of clients: no per-client copies and, by default, no `DataLoader` and no worker
processes (the optional ``dataloader`` mode keeps a bounded cache of per-client loaders).
Batches are ``index_select`` slices of the shared tensors, in an order seeded from
``(seed, round_idx, client_id)`` alone, so they do not depend on the order in which clients are trained
or on which process trains them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from csfl_fabric.data.indices import ClientIndices
from csfl_fabric.data.loaders import ClientLoader, LoaderCache, batch_indices

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


def _check_batch_args(batch_size: int, epochs: int, steps: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` >= 1 but got {batch_size}.")
    if steps is not None and steps < 0:
        raise ValueError(f"Expected `steps` >= 0 or None but got {steps}.")
    if epochs < 0:
        raise ValueError(f"Expected `epochs` >= 0 but got {epochs}.")


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
        loader: in the store's ``dataloader`` mode, returns this client's (cached or recreated) loader.
        device: where batches go when ``x`` lives elsewhere (``dataloader`` mode); None: where ``x`` is.
    """

    client_id: int
    num_samples: int
    x: Tensor
    y: Tensor
    indices: Tensor
    seed: int
    loader: Callable[[], ClientLoader] | None = None
    device: torch.device | None = None

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
        _check_batch_args(batch_size, epochs, steps)
        if self.loader is not None:
            yield from self.loader().batches(self.seed, batch_size, epochs, steps)
            return
        for idx in batch_indices(self.indices, self.seed, batch_size, epochs, steps):
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def batch_indices(self, batch_size: int, *, epochs: int = 1, steps: int | None = None) -> Iterator[Tensor]:
        """The rows of ``x`` and ``y`` that `batches` yields, batch by batch (same arguments, same order).

        The cohort trainer gathers many clients' batches at once from these; both trainers thus see
        identical batches (in either loader mode, since the loaders draw the same seeded permutation).
        """
        _check_batch_args(batch_size, epochs, steps)
        yield from batch_indices(self.indices, self.seed, batch_size, epochs, steps)

    def arrays(self) -> tuple[Tensor, Tensor]:
        """All of the client's samples, in index order (a copy of this client's rows only)."""
        x, y = self.x.index_select(0, self.indices), self.y.index_select(0, self.indices)
        return (x, y) if self.device is None else (x.to(self.device), y.to(self.device))


class ClientStore:
    """The train set held once on ``device``, and every client's int64 indices into it, in one tensor.

    Args:
        x: inputs of all clients, first dimension = samples.
        y: labels, same first dimension as ``x``.
        client_indices: one index array into ``x`` per client (e.g. a partitioner's output), or a `ClientIndices`.
        seed: run seed; with the round and client it seeds each client's batch order.
        device: where the tensors live; they are moved there once, here. In ``dataloader`` mode they stay where
            they are and each batch is moved to ``device``.
        loader: ``tensor`` (batches sliced from the shared tensors) or ``dataloader`` (a lazily created
            `DataLoader` per client, kept in an LRU cache of ``max_cached_loaders`` that the memory policies
            may empty; see `csfl_fabric.data.loaders`). Both give identical batches.
        num_workers: worker processes per loader in ``dataloader`` mode.
        max_cached_loaders: loaders kept at once in ``dataloader`` mode.

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
        loader: str = "tensor",
        num_workers: int = 0,
        max_cached_loaders: int = 16,
    ) -> None:
        if loader not in ("tensor", "dataloader"):
            raise ValueError(f"Expected `loader` to be 'tensor' or 'dataloader' but got {loader!r}.")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Expected `x` and `y` with the same number of samples but got {x.shape[0]} and {y.shape[0]}."
            )
        if seed < 0:
            raise ValueError(f"Expected `seed` >= 0 but got {seed}.")
        self.device = torch.device(device)
        self.seed = int(seed)
        # `.to` returns the tensor itself when it is already there, so the CPU case copies nothing.
        home = self.device if loader == "tensor" else x.device
        self.x = x.to(home)
        self.y = y.to(home)
        # One index array for all clients and their offsets into it: per-client tensors (and the Python objects
        # around them) cost ~0.5 kB and ~7 us a client to build, 0.5 GB and 7 s for 10^6 clients (measured).
        parts = ClientIndices.of(client_indices)
        flat, self._offsets = parts.flat, parts.offsets
        bad = np.flatnonzero((flat < 0) | (flat >= x.shape[0]))
        if bad.size:
            client_id = int(np.searchsorted(self._offsets, bad[0], side="right")) - 1
            raise ValueError(f"Client {client_id} has indices outside [0, {x.shape[0]}).")
        self._num_samples = parts.sizes
        self._flat = torch.from_numpy(flat).to(home)
        self.loaders: LoaderCache | None = None
        if loader == "dataloader":
            self.loaders = LoaderCache(
                lambda c: ClientLoader(self.x, self.y, self._slice(c), num_workers, self.device), max_cached_loaders
            )

    def _slice(self, client_id: int) -> Tensor:
        # A view of the one index tensor (no copy).
        return self._flat[int(self._offsets[client_id]) : int(self._offsets[client_id + 1])]

    def flat_indices(self) -> tuple[Tensor, np.ndarray]:
        """Every client's indices in one tensor, client by client, and the ``num_clients + 1`` offsets into it.

        Client ``c`` holds ``flat[offsets[c]:offsets[c + 1]]``: what a vectorised pass over all clients reads
        (e.g. which labels each client holds) instead of ``client(c)`` once per client.

        >>> store = ClientStore(torch.zeros(5), torch.zeros(5), [np.array([4, 0]), np.array([2])], seed=0)
        >>> flat, offsets = store.flat_indices()
        >>> flat.tolist(), offsets.tolist()
        ([4, 0, 2], [0, 2, 3])
        """
        return self._flat, self._offsets.copy()

    def release(self) -> None:
        """Drop the cached loaders (and their worker processes); each is recreated on its client's next use."""
        if self.loaders is not None:
            self.loaders.clear()

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self._num_samples)

    @property
    def num_samples(self) -> np.ndarray:
        """Samples per client (int64; a copy, so callers cannot change the store)."""
        return self._num_samples.copy()

    def label_histograms(self, num_classes: int | None = None) -> np.ndarray:
        """Label counts per client, K x C (C = ``num_classes``, or the largest training label + 1).

        >>> parts = [np.array([0, 1, 2]), np.array([3])]
        >>> store = ClientStore(torch.zeros(4), torch.tensor([0, 2, 2, 1]), parts, seed=0)
        >>> store.label_histograms().tolist()
        [[1, 0, 2], [0, 1, 0]]
        """
        y = self.y.cpu().long().numpy()
        c = int(num_classes) if num_classes is not None else (int(y.max()) + 1 if len(y) else 0)
        k = self.num_clients
        # One bincount over (client, label) pairs of the flat index array: no Python loop over the clients.
        owner = np.repeat(np.arange(k, dtype=np.int64), np.diff(self._offsets))
        pairs = owner * c + y[self._flat.cpu().numpy()]
        return np.bincount(pairs, minlength=k * c).reshape(k, c).astype(np.int64)

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
            indices=self._slice(client_id),
            seed=_client_seed(self.seed, int(round_idx), int(client_id)),
            loader=None if self.loaders is None else lambda: self.loaders.get(client_id),  # type: ignore[union-attr]
            device=None if self.loaders is None else self.device,
        )

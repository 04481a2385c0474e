"""`ClientIndices`: every client's sample indices as one array and offsets, a sequence of per-client views.

What partitioners return (a list of arrays) costs two Python objects and ~150 bytes a client; for 10^6
clients of 5 samples that is more than the indices themselves, and a Python loop over them a second or
more. The store, the label-coverage matrix and the natural split read the one array instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np


class ClientIndices(Sequence[np.ndarray]):
    """Client ``c``'s indices are ``flat[offsets[c]:offsets[c + 1]]`` (a view); ``len`` is the number of clients.

    Args:
        flat: int64 sample indices of every client, client by client.
        offsets: ``num_clients + 1`` non-decreasing positions into ``flat``, from 0 to ``len(flat)``.

    >>> parts = ClientIndices.of([np.array([4, 0]), np.array([], dtype=np.int64), np.array([2])])
    >>> len(parts), parts[0].tolist(), parts.sizes.tolist(), parts.offsets.tolist()
    (3, [4, 0], [2, 0, 1], [0, 2, 2, 3])
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat = np.asarray(flat, dtype=np.int64).reshape(-1)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if len(self.offsets) == 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.flat) or \
                (np.diff(self.offsets) < 0).any():
            raise ValueError(f"Expected `offsets` rising from 0 to len(flat)={len(self.flat)}.")

    @classmethod
    def of(cls, parts: Sequence[np.ndarray]) -> ClientIndices:
        """``parts`` as one array (itself when it already is one); each part is flattened to int64."""
        if isinstance(parts, ClientIndices):
            return parts
        sizes = np.fromiter(map(np.size, parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate([np.zeros(0, dtype=np.int64), *parts], axis=None).astype(np.int64, copy=False)
        return cls(flat, np.concatenate([[0], np.cumsum(sizes)]))

    @property
    def sizes(self) -> np.ndarray:
        """Samples per client."""
        return np.diff(self.offsets)

    def owners(self) -> np.ndarray:
        """The client of each entry of ``flat``."""
        return np.repeat(np.arange(len(self)), self.sizes)

    def sorted(self) -> ClientIndices:
        """Each client's indices in ascending order (one sort of the whole array, not one per client)."""
        falls = np.flatnonzero(self.flat[1:] < self.flat[:-1]) + 1  # where the next index is smaller
        if not np.isin(falls, self.offsets).all():  # some client's indices fall, not only at client boundaries
            return ClientIndices(self.flat[np.lexsort((self.flat, self.owners()))], self.offsets)
        return self

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, c: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, c: slice) -> list[np.ndarray]: ...

    def __getitem__(self, c: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(c, slice):
            return [self[i] for i in range(*c.indices(len(self)))]
        n = len(self)
        if not -n <= c < n:
            raise IndexError(f"client {c} out of range for {n} clients")
        c = int(c) % n
        return self.flat[self.offsets[c] : self.offsets[c + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.flat[a:b] for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist(), strict=True))

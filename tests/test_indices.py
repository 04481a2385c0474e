"""ClientIndices: one array and offsets behave as the list of per-client arrays they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.data.indices import ClientIndices
from csfl_fabric.data.partition import natural


def _parts(rng: np.random.Generator) -> list[np.ndarray]:
    sizes = rng.integers(0, 6, size=30)
    perm = rng.permutation(int(sizes.sum()))
    return np.split(perm, np.cumsum(sizes)[:-1])


def test_a_list_round_trips_with_its_views_sizes_and_owners() -> None:
    parts = _parts(np.random.default_rng(0))
    flat = ClientIndices.of(parts)
    assert ClientIndices.of(flat) is flat
    assert len(flat) == len(parts)
    assert flat.sizes.tolist() == [len(p) for p in parts]
    assert [p.tolist() for p in flat] == [p.tolist() for p in parts]
    assert [flat[c].tolist() for c in (0, -1)] == [parts[0].tolist(), parts[-1].tolist()]
    assert [p.tolist() for p in flat[2:5]] == [p.tolist() for p in parts[2:5]]
    assert flat.owners().tolist() == [c for c, p in enumerate(parts) for _ in p]
    with pytest.raises(IndexError):
        flat[len(parts)]


def test_sorted_sorts_within_each_client_only() -> None:
    parts = _parts(np.random.default_rng(1))
    flat = ClientIndices.of(parts).sorted()
    assert [p.tolist() for p in flat] == [sorted(p.tolist()) for p in parts]
    assert flat.sorted() is flat  # already sorted: no copy


def test_bad_offsets_are_rejected() -> None:
    with pytest.raises(ValueError, match="offsets"):
        ClientIndices(np.arange(4), np.array([0, 3, 2, 4]))
    with pytest.raises(ValueError, match="offsets"):
        ClientIndices(np.arange(4), np.array([0, 3]))


def test_the_natural_split_of_a_flat_dataset_stays_flat_and_sorted() -> None:
    y = torch.tensor([0, 1, 1, 0])
    clients = ClientIndices(np.array([3, 0, 1, 2]), np.array([0, 2, 4]))
    ds = FederatedDataset(torch.zeros(4, 1), y, torch.zeros(0, 1), y[:0], 2, (1,), clients)
    parts = natural(ds, 2, np.random.default_rng(0))
    assert isinstance(parts, ClientIndices)
    assert [p.tolist() for p in parts] == [[0, 3], [1, 2]]

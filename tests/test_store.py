"""Tests for ClientStore: coverage per epoch, steps mode, order-independent seeding, no per-client copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csfl_fabric.data import ClientStore


def _store(seed: int = 0, n: int = 23, num_clients: int = 3) -> ClientStore:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 4)  # row i holds the value i
    y = torch.arange(n)
    parts = np.array_split(np.random.default_rng(0).permutation(n), num_clients)
    return ClientStore(x, y, parts, seed=seed)


def _ids(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    return [yb.tolist() for _, yb in batches]


def test_properties() -> None:
    store = _store()
    assert store.num_clients == 3
    assert store.num_samples.dtype == np.int64
    assert store.num_samples.tolist() == [8, 8, 7]
    store.num_samples[0] = 99  # a copy: the store does not change
    assert store.num_samples[0] == 8


def test_batches_cover_every_sample_once_per_epoch() -> None:
    store = _store()
    client = store.client(0, round_idx=0)
    owned = sorted(client.arrays()[1].tolist())
    batches = list(client.batches(3, epochs=2))
    assert [len(yb) for _, yb in batches] == [3, 3, 2] * 2, "the last partial batch is kept"
    first, second = sum(_ids(batches[:3]), []), sum(_ids(batches[3:]), [])
    assert sorted(first) == owned
    assert sorted(second) == owned
    assert first != second, "each epoch draws a fresh permutation"
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb), "inputs and labels stay aligned"


@pytest.mark.parametrize("steps", [1, 3, 4, 7, 20])
def test_steps_mode_yields_exactly_steps_batches(steps: int) -> None:
    client = _store().client(1, round_idx=0)
    batches = list(client.batches(3, epochs=1, steps=steps))
    assert len(batches) == steps
    # Steps cycle through whole fresh epochs: every full epoch covers the client's 8 samples once.
    flat = sum(_ids(batches), [])
    per_epoch = [flat[i : i + 8] for i in range(0, len(flat) - len(flat) % 8, 8)]
    assert all(sorted(e) == sorted(client.arrays()[1].tolist()) for e in per_epoch)


def test_zero_steps_and_zero_epochs_yield_nothing() -> None:
    client = _store().client(0, round_idx=0)
    assert list(client.batches(4, steps=0)) == []
    assert list(client.batches(4, epochs=0)) == []


def test_same_seed_round_client_gives_identical_batches_regardless_of_order() -> None:
    forward = {c: _ids(list(_store(seed=5).client(c, round_idx=2).batches(2))) for c in range(3)}
    store = _store(seed=5)
    store.client(0, round_idx=9)  # unrelated calls in between must not matter
    backward = {c: _ids(list(store.client(c, round_idx=2).batches(2))) for c in reversed(range(3))}
    assert forward == backward
    client = store.client(1, round_idx=2)
    assert _ids(list(client.batches(2))) == _ids(list(client.batches(2))), "iterating twice repeats the order"


def test_different_round_or_seed_changes_the_order() -> None:
    store = _store(seed=5)
    r0 = _ids(list(store.client(0, round_idx=0).batches(8)))
    r1 = _ids(list(store.client(0, round_idx=1).batches(8)))
    other_seed = _ids(list(_store(seed=6).client(0, round_idx=0).batches(8)))
    assert sorted(r0[0]) == sorted(r1[0])
    assert r0 != r1
    assert r0 != other_seed


def test_the_store_does_not_copy_x_per_client() -> None:
    x = torch.randn(50, 3, 8, 8)
    y = torch.randint(0, 10, (50,))
    store = ClientStore(x, y, np.array_split(np.arange(50), 5), seed=0)
    assert store.x.data_ptr() == x.data_ptr(), "on its own device the data is not even copied once"
    clients = [store.client(c, round_idx=0) for c in range(5)]
    assert all(c.x.data_ptr() == x.data_ptr() and c.y.data_ptr() == y.data_ptr() for c in clients)
    assert all(c.indices.dtype == torch.int64 for c in clients)


def test_arrays_returns_the_clients_samples() -> None:
    store = _store()
    xs, ys = store.client(2, round_idx=0).arrays()
    assert xs.shape == (7, 4)
    assert torch.equal(xs[:, 0].long(), ys)


def test_empty_client_yields_nothing() -> None:
    store = ClientStore(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), [np.arange(4), np.array([])], seed=0)
    assert store.num_samples.tolist() == [4, 0]
    assert list(store.client(1, round_idx=0).batches(2, steps=5)) == []


def test_invalid_arguments_raise() -> None:
    store = _store()
    with pytest.raises(ValueError, match="client_id"):
        store.client(3, round_idx=0)
    with pytest.raises(ValueError, match="batch_size"):
        next(store.client(0, round_idx=0).batches(0))
    with pytest.raises(ValueError, match="indices outside"):
        ClientStore(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), [np.array([0, 5])], seed=0)


def test_dataloader_mode_gives_the_tensor_paths_batches_and_recreates_evicted_loaders() -> None:
    # Prepare: the same data in both modes; a cache of 2 loaders for 3 clients forces evictions.
    x, y = torch.randn(23, 2, 3), torch.arange(23) % 4
    parts = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 23)]
    tensor = ClientStore(x, y, parts, seed=3)
    lazy = ClientStore(x, y, parts, seed=3, loader="dataloader", max_cached_loaders=2)
    assert lazy.loaders is not None
    assert len(lazy.loaders) == 0  # nothing is created up front

    def batches(store: ClientStore, c: int, r: int, **kw: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(store.client(c, r).batches(3, **kw))

    for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 1)]:
        for kw in ({"epochs": 2}, {"steps": 5}):
            expected, got = batches(tensor, c, r, **kw), batches(lazy, c, r, **kw)
            assert len(got) == len(expected) > 0
            for (xe, ye), (xg, yg) in zip(expected, got, strict=True):
                assert torch.equal(xe, xg)
                assert torch.equal(ye, yg)
                assert yg.dtype == torch.int64
        assert len(lazy.loaders) <= 2
    assert lazy.loaders.created > 3  # evicted loaders were recreated on their client's next use
    # Released loaders come back on demand, with the same batches; arrays() is the client's rows in index order.
    lazy.release()
    assert len(lazy.loaders) == 0
    assert torch.equal(batches(lazy, 2, 7)[0][0], batches(tensor, 2, 7)[0][0])
    xa, ya = lazy.client(1, 0).arrays()
    assert torch.equal(xa, x[8:16])
    assert torch.equal(ya, y[8:16])


def test_dataloader_mode_with_worker_processes_gives_the_same_batches() -> None:
    x, y = torch.randn(20, 4), torch.arange(20)
    parts = [np.arange(0, 10), np.arange(10, 20)]
    expected = [xb for xb, _ in ClientStore(x, y, parts, seed=1).client(1, 4).batches(4, epochs=2)]
    lazy = ClientStore(x, y, parts, seed=1, loader="dataloader", num_workers=1, max_cached_loaders=1)
    for _ in range(2):  # the second pass reuses the cached loader's persistent worker
        got = [xb for xb, _ in lazy.client(1, 4).batches(4, epochs=2)]
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    lazy.release()


def test_unknown_loader_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="`loader`"):
        ClientStore(torch.zeros(2), torch.zeros(2, dtype=torch.int64), [np.array([0, 1])], seed=0, loader="disk")


def test_batch_indices_are_the_rows_of_batches() -> None:
    client = _store().client(1, round_idx=4)
    rows = [idx.tolist() for idx in client.batch_indices(3, epochs=2)]
    assert rows == _ids(list(client.batches(3, epochs=2)))  # row i holds label i
    assert len(rows) == 6  # ceil(8 / 3) batches x 2 epochs


def test_every_client_is_a_view_of_one_index_tensor() -> None:
    # One tensor for all clients (no per-client tensors: 10^6 of them cost ~0.5 GB), in the partition's order.
    store = _store()
    flat, offsets = store.flat_indices()
    parts = np.array_split(np.random.default_rng(0).permutation(23), 3)
    assert flat.tolist() == np.concatenate(parts).tolist()
    assert offsets.tolist() == [0, 8, 16, 23]
    for c in range(3):
        indices = store.client(c, 0).indices
        assert indices.tolist() == parts[c].tolist()
        assert indices.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()


def test_an_index_out_of_range_names_its_client() -> None:
    with pytest.raises(ValueError, match=r"Client 1 has indices outside \[0, 4\)"):
        ClientStore(torch.zeros(4), torch.zeros(4), [np.array([0, 1]), np.array([3, 4]), np.array([2])], seed=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_store_on_cuda_gives_the_cpu_store_batches() -> None:
    cpu, x = _store(), torch.arange(23, dtype=torch.float32).unsqueeze(1).repeat(1, 4)
    parts = np.array_split(np.random.default_rng(0).permutation(23), 3)
    gpu = ClientStore(x, torch.arange(23), parts, seed=0, device="cuda")
    for c in range(3):
        on_gpu = gpu.client(c, 2)
        assert on_gpu.indices.is_cuda
        assert _ids([(a.cpu(), b.cpu()) for a, b in on_gpu.batches(3)]) == _ids(list(cpu.client(c, 2).batches(3)))

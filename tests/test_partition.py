"""Contract tests over every registered partitioner, plus the skew each non-IID partitioner promises."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from csfl_fabric.data import FederatedDataset, partition
from csfl_fabric.data.partition import dirichlet, natural, shards
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import DATASETS, PARTITIONERS

NUM_CLIENTS = 10


@pytest.fixture(scope="module")
def digits() -> FederatedDataset:
    return DATASETS.build("digits", root="unused", download=False, num_clients=NUM_CLIENTS,
                          rng=np.random.default_rng(0))  # fmt: skip


def _with_clients(ds: FederatedDataset, num_clients: int) -> FederatedDataset:
    """``ds`` with natural clients: consecutive blocks of its train set."""
    blocks = np.array_split(np.arange(len(ds.y_train), dtype=np.int64), num_clients)
    return FederatedDataset(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape, blocks)


def _split(name: str, ds: FederatedDataset, seed: int = 0, num_clients: int = NUM_CLIENTS, **params: Any) -> list:
    return PARTITIONERS.build(name, params, dataset=ds, num_clients=num_clients, rng=np.random.default_rng(seed))


def _tv_from_global(ds: FederatedDataset, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    labels = ds.y_train.numpy()
    global_p = np.bincount(labels, minlength=ds.num_classes) / len(labels)
    return float(np.mean([
        0.5 * np.abs(np.bincount(labels[p], minlength=ds.num_classes) / len(p) - global_p).sum() for p in parts
    ]))  # fmt: skip


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partition_is_disjoint_complete_sorted_and_seeded(name: str, digits: FederatedDataset) -> None:
    ds = _with_clients(digits, NUM_CLIENTS)
    parts = _split(name, ds, seed=1)
    assert len(parts) == NUM_CLIENTS
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts), "each client's indices are sorted and unique"
    everything = np.concatenate(parts)
    assert len(everything) == len(ds.y_train), "disjoint: no index is given twice"
    assert np.array_equal(np.sort(everything), np.arange(len(ds.y_train))), "complete: every index is given"
    assert all(len(p) > 0 for p in parts)
    again = _split(name, ds, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize("name", sorted(set(PARTITIONERS.names()) - {"natural"}))
def test_partition_depends_on_the_seed(name: str, digits: FederatedDataset) -> None:
    a, b = _split(name, digits, seed=1), _split(name, digits, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", sorted(set(PARTITIONERS.names()) - {"natural"}))
def test_too_many_clients_names_num_clients(name: str, digits: FederatedDataset) -> None:
    with pytest.raises(ConfigError, match=r"data\.num_clients"):
        _split(name, digits, num_clients=len(digits.y_train) + 1)


def test_iid_sizes_differ_by_at_most_one(digits: FederatedDataset) -> None:
    sizes = [len(p) for p in _split("iid", digits)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_grows_as_alpha_shrinks(digits: FederatedDataset) -> None:
    skew = [_tv_from_global(digits, _split("dirichlet", digits, alpha=alpha)) for alpha in (100.0, 1.0, 0.1)]
    assert skew[0] < skew[1] < skew[2]
    assert skew[0] < 0.1 < 0.5 < skew[2]
    classes = [np.mean([len(np.unique(digits.y_train[p].numpy())) for p in _split("dirichlet", digits, alpha=a)])
               for a in (100.0, 0.1)]  # fmt: skip
    assert classes[0] > classes[1]


def test_dirichlet_respects_min_size(digits: FederatedDataset) -> None:
    parts = dirichlet(digits, 20, np.random.default_rng(0), alpha=0.5, min_size=20)
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_impossible_min_size_is_a_config_error(
    digits: FederatedDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Enough samples in total, but with alpha this small some client almost always gets too few.
    monkeypatch.setattr(partition, "MAX_DIRICHLET_TRIES", 5)
    with pytest.raises(ConfigError, match=r"min_size"):
        dirichlet(digits, 100, np.random.default_rng(0), alpha=0.01, min_size=14)
    with pytest.raises(ConfigError, match=r"data\.num_clients"):
        dirichlet(digits, 100, np.random.default_rng(0), min_size=100)


@pytest.mark.parametrize(("params", "key"), [({"alpha": 0.0}, "alpha"), ({"alpha": -1}, "alpha"),
                                             ({"min_size": -1}, "min_size")])  # fmt: skip
def test_dirichlet_rejects_bad_params(digits: FederatedDataset, params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"data\.partition\.params\.{key}"):
        _split("dirichlet", digits, **params)


def test_shards_give_each_client_at_most_shards_per_client_labels() -> None:
    # Balanced classes whose size is a multiple of the shard size: every shard holds a single label.
    y = torch.arange(10).repeat_interleave(40)
    ds = FederatedDataset(torch.zeros(400, 1), y, torch.zeros(0, 1), y[:0], 10, (1,))
    for spc in (1, 2, 4):
        parts = shards(ds, 20, np.random.default_rng(spc), shards_per_client=spc)
        labels_per_client = [len(np.unique(y[p].numpy())) for p in parts]
        assert max(labels_per_client) <= spc
        assert all(len(p) == 400 // 20 for p in parts)


def test_shards_on_uneven_classes_are_still_pathological(digits: FederatedDataset) -> None:
    # Class sizes are not multiples of the shard size, so a shard may straddle two labels (as in the paper).
    parts = _split("shards", digits, num_clients=20, shards_per_client=2)
    labels_per_client = np.array([len(np.unique(digits.y_train[p].numpy())) for p in parts])
    assert labels_per_client.max() <= 4
    assert np.median(labels_per_client) <= 3


def test_shards_reject_bad_params(digits: FederatedDataset) -> None:
    with pytest.raises(ConfigError, match=r"data\.partition\.params\.shards_per_client"):
        _split("shards", digits, shards_per_client=0)


def test_natural_returns_the_datasets_own_clients() -> None:
    ds = DATASETS.build("synthetic", root="unused", download=False, num_clients=5, rng=np.random.default_rng(0))
    parts = natural(ds, 5, np.random.default_rng(0))
    assert ds.client_indices is not None
    assert all(np.array_equal(a, b) for a, b in zip(parts, ds.client_indices, strict=True))


def test_natural_errors(digits: FederatedDataset) -> None:
    with pytest.raises(ConfigError, match=r"data\.partition\.name=natural"):
        natural(digits, NUM_CLIENTS, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"data\.num_clients=7.*data\.num_clients=10"):
        natural(_with_clients(digits, 10), 7, np.random.default_rng(0))


def test_unknown_param_is_rejected_by_the_registry(digits: FederatedDataset) -> None:
    with pytest.raises(TypeError, match="Valid params: alpha, min_size"):
        _split("dirichlet", digits, beta=1.0)

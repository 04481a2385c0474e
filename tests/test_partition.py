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


# --- statistical checks against each partitioner's definition (fixed seeds, so deterministic) ----------------


def _labels_only(labels: np.ndarray) -> FederatedDataset:
    """A dataset of only labels (partitioners never look at the inputs): cheap at a million samples."""
    y = torch.from_numpy(labels.astype(np.int64))
    return FederatedDataset(torch.zeros(len(y), 0), y, torch.zeros(0, 0), y[:0], int(labels.max()) + 1, (0,))


def test_dirichlet_shares_follow_the_dirichlet_marginal() -> None:
    from scipy import stats

    # Client 0's share of each class is the first coordinate of Dir_K(alpha): Beta(alpha, (K-1) alpha).
    k, alpha, classes, per_class = 4, 0.5, 300, 5000
    ds = _labels_only(np.repeat(np.arange(classes), per_class))
    parts = dirichlet(ds, k, np.random.default_rng(0), alpha=alpha, min_size=0)
    share = np.bincount(ds.y_train[parts[0]].numpy(), minlength=classes) / per_class
    assert stats.kstest(share, stats.beta(alpha, (k - 1) * alpha).cdf).pvalue > 0.01
    assert stats.kstest(share, stats.beta(2 * alpha, 2 * (k - 1) * alpha).cdf).pvalue < 0.01  # the test has power


def test_dirichlet_max_size_caps_every_client_without_changing_the_draws(digits: FederatedDataset) -> None:
    n = len(digits.y_train)
    cap = -(-n // NUM_CLIENTS) + 20  # a little above an even split: binding for the big clients
    free = _split("dirichlet", digits, alpha=0.3, min_size=0)
    capped = _split("dirichlet", digits, alpha=0.3, min_size=0, max_size=cap)
    assert max(len(p) for p in free) > cap
    assert max(len(p) for p in capped) <= cap
    assert sorted(np.concatenate(capped).tolist()) == list(range(n))
    # A cap that binds nobody changes nothing: the cap adds no draws to the stream.
    loose = _split("dirichlet", digits, alpha=0.3, min_size=0, max_size=n)
    assert all(np.array_equal(a, b) for a, b in zip(free, loose, strict=True))
    with pytest.raises(ConfigError, match=r"data\.partition\.params\.max_size=10"):
        _split("dirichlet", digits, max_size=10)


@pytest.mark.parametrize(("distribution", "params"), [("lognormal", {"sigma": 1.5}), ("powerlaw", {"exponent": 2.5})])
def test_quantity_skew_sizes_follow_their_law_and_labels_stay_iid(distribution: str, params: dict[str, Any]) -> None:
    from scipy import stats

    k = 300
    ds = _labels_only(np.arange(3000 * k) % 10)  # enough samples that rounding sizes to integers is negligible
    parts = _split("quantity_skew", ds, seed=2, num_clients=k, distribution=distribution, min_size=0, **params)
    # Sizes are c * w_k for an unknown c, so log sizes are log w_k shifted: remove the shift by its estimate.
    log_sizes = np.log([len(p) for p in parts])
    if distribution == "lognormal":  # log w ~ N(0, sigma); the mean estimates the shift
        sigma = params["sigma"]
        centred, law, wrong = log_sizes - log_sizes.mean(), stats.norm(0, sigma), stats.norm(0, 1.5 * sigma)
    else:  # Pareto(a) with scale 1: log w ~ Exponential(rate a); the minimum estimates the shift (bias 1 / (a k))
        a = params["exponent"]
        centred, law, wrong = log_sizes - log_sizes.min(), stats.expon(scale=1 / a), stats.expon(scale=1.5 / a)
    assert stats.kstest(centred, law.cdf).pvalue > 0.01
    assert stats.kstest(centred, wrong.cdf).pvalue < 0.01  # the test has power
    # IID labels: the clients x classes table shows no dependence (chi-square test of independence).
    table = np.stack([np.bincount(ds.y_train[p].numpy(), minlength=10) for p in parts])
    big = table[table.sum(1) >= 100]  # cells with expected counts >= 10
    assert stats.chi2_contingency(big).pvalue > 0.01
    skewed = np.stack([np.bincount(ds.y_train[p].numpy(), minlength=10)
                       for p in _split("dirichlet", ds, num_clients=50, alpha=1.0)])
    assert stats.chi2_contingency(skewed).pvalue < 1e-6  # the same test does see label skew


def test_quantity_skew_min_size_and_bad_params(digits: FederatedDataset) -> None:
    parts = _split("quantity_skew", digits, sigma=3.0, min_size=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(ConfigError, match=r"data\.partition\.params\.distribution='zipf'.*lognormal"):
        _split("quantity_skew", digits, distribution="zipf")


def test_dirichlet_clients_label_counts_are_dirichlet_multinomial() -> None:
    from scipy import stats

    # Hsu et al.: q_k ~ Dir(alpha p), counts ~ Multinomial(n_k, q_k). With two equal classes, client k's count of
    # class 0 is BetaBinomial(n_k, alpha / 2, alpha / 2). The first half of the clients never meet an exhausted class.
    k, n, alpha = 2000, 20, 1.0
    ds = _labels_only(np.arange(k * n) % 2)
    parts = _split("dirichlet_clients", ds, num_clients=k, alpha=alpha)
    assert {len(p) for p in parts} == {n}
    zeros = np.array([(ds.y_train[p] == 0).sum().item() for p in parts[: k // 2]])
    observed = np.bincount(zeros, minlength=n + 1)

    def expected(a: float) -> np.ndarray:
        return stats.betabinom(n, a, a).pmf(np.arange(n + 1)) * len(zeros)

    assert stats.chisquare(observed, expected(alpha / 2)).pvalue > 0.01
    assert stats.chisquare(observed, expected(alpha)).pvalue < 0.01  # alpha = 2 would look different


def test_dirichlet_clients_alpha_sets_the_skew(digits: FederatedDataset) -> None:
    assert _tv_from_global(digits, _split("dirichlet_clients", digits, alpha=0.1)) > 0.6
    assert _tv_from_global(digits, _split("dirichlet_clients", digits, alpha=1000.0)) < 0.15

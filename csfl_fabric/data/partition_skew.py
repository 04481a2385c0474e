"""Partitioners for quantity skew and per-client label skew, registered in `PARTITIONERS` (see `partition`).

``quantity_skew`` gives clients very different numbers of IID samples; ``dirichlet_clients`` gives equal-sized
clients their own class mixture. Same signature and contract as `csfl_fabric.data.partition`.
"""

from __future__ import annotations

import numpy as np

from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.data.partition import _labels, _param, _sorted, capped_counts
from csfl_fabric.registry import PARTITIONERS

SIZE_DISTRIBUTIONS = ("lognormal", "powerlaw")


def proportional_sizes(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers that sum to ``total`` in proportion to ``weights``, by largest remainder (Hamilton's method).

    >>> proportional_sizes(np.array([1.0, 2.0, 3.0]), 10).tolist()
    [2, 3, 5]
    """
    raw = weights / weights.sum() * total
    sizes = np.floor(raw).astype(np.int64)
    # The units floor dropped go to the largest fractional parts; a stable sort keeps ties in client order.
    sizes[np.argsort(-(raw - sizes), kind="stable")[: total - int(sizes.sum())]] += 1
    return sizes


@PARTITIONERS.register("quantity_skew")
def quantity_skew(
    dataset: FederatedDataset,
    num_clients: int,
    rng: np.random.Generator,
    *,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    exponent: float = 1.5,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Quantity skew: client sizes follow a heavy-tailed law, labels stay IID.

    Each client k draws a weight ``w_k``: ``LogNormal(0, sigma)`` (the size law of FedProx's Synthetic data), or
    for ``powerlaw`` a Pareto law with density ``exponent * w^-(exponent+1)`` on ``w >= 1`` ("the number of
    samples per device follows a power law", Li et al., "Federated Optimization in Heterogeneous Networks",
    MLSys 2020, https://arxiv.org/abs/1812.06127). Every client gets ``min_size`` samples and the rest of the
    train set in proportion to ``w_k`` (`proportional_sizes`); the samples are a uniform shuffle, so each
    client's labels are a simple random sample of the train set's.

    Args:
        dataset: the dataset to split.
        num_clients: number of clients.
        rng: draws the weights, then the shuffle.
        distribution: ``lognormal`` or ``powerlaw``.
        sigma: the lognormal's shape (std of ``log w``), > 0; larger is more skewed.
        exponent: the power law's tail index, > 0; smaller is more skewed (below 1 the mean is infinite).
        min_size: the fewest samples any client gets, >= 0.

    Returns:
        One sorted int64 index array per client.

    >>> import torch
    >>> y = torch.arange(100) % 4
    >>> ds = FederatedDataset(torch.zeros(100, 1), y, torch.zeros(0, 1), y[:0], 4, (1,))
    >>> parts = quantity_skew(ds, 5, np.random.default_rng(0), sigma=2.0, min_size=2)
    >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 2, len({len(p) for p in parts}) > 1
    (100, True, True)
    """
    _param("distribution", distribution, distribution in SIZE_DISTRIBUTIONS, f"choose one of {SIZE_DISTRIBUTIONS}")
    _param("sigma", sigma, isinstance(sigma, (int, float)) and sigma > 0, "use a shape > 0, e.g. 1.0")
    _param("exponent", exponent, isinstance(exponent, (int, float)) and exponent > 0, "use a tail index > 0, e.g. 1.5")
    _param("min_size", min_size, isinstance(min_size, int) and min_size >= 0, "use an integer >= 0, e.g. 1")
    n = len(_labels(dataset, num_clients, max(min_size, 1)))
    # numpy's pareto is the Lomax law (Pareto II); + 1 is the classical Pareto with scale 1.
    if distribution == "lognormal":
        weights = rng.lognormal(0.0, sigma, num_clients)
    else:
        weights = rng.pareto(exponent, num_clients) + 1
    sizes = min_size + proportional_sizes(weights, n - num_clients * min_size)
    return _sorted(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]))


@PARTITIONERS.register("dirichlet_clients")
def dirichlet_clients(
    dataset: FederatedDataset, num_clients: int, rng: np.random.Generator, *, alpha: float = 1.0
) -> list[np.ndarray]:
    """Per-client label skew: client k's class mixture is ``q_k ~ Dir(alpha * p)``, p the train set's class shares.

    Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification", 2019, https://arxiv.org/abs/1909.06335. Clients hold equal numbers of samples (differing
    by at most one), as in the paper; client k's class counts are ``Multinomial(n_k, q_k)``, drawn without
    replacement from the classes' shuffled samples. A class that has run out passes its share to the classes
    left, in proportion to ``q_k``, so that the clients together hold the whole train set: the last clients,
    which find some classes used up, deviate from their ``q_k``. ``alpha`` -> 0 gives one class per client,
    ``alpha`` -> infinity the train set's own mixture.

    Args:
        dataset: the dataset to split.
        num_clients: number of clients.
        rng: draws the shuffles, then client by client ``q_k`` and its counts.
        alpha: concentration, > 0.

    Returns:
        One sorted int64 index array per client.

    >>> import torch
    >>> y = torch.tensor([0] * 6 + [1] * 6)
    >>> ds = FederatedDataset(torch.zeros(12, 1), y, torch.zeros(0, 1), y[:0], 2, (1,))
    >>> parts = dirichlet_clients(ds, 3, np.random.default_rng(0), alpha=0.5)
    >>> [len(p) for p in parts], sorted(np.concatenate(parts).tolist()) == list(range(12))
    ([4, 4, 4], True)
    """
    _param("alpha", alpha, isinstance(alpha, (int, float)) and alpha > 0, "use a concentration > 0, e.g. 1.0")
    labels = _labels(dataset, num_clients)
    classes, left = np.unique(labels, return_counts=True)
    prior = left / left.sum()
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    taken = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for size in (len(a) for a in np.array_split(np.arange(len(labels)), num_clients)):
        q = rng.dirichlet(alpha * prior)
        want = rng.multinomial(size, q / q.sum())  # renormalised: multinomial rejects float sums just above 1
        counts = capped_counts(want, q, left)
        parts.append(np.concatenate([pool[t : t + k] for pool, t, k in zip(pools, taken, counts, strict=True)]))
        taken += counts
        left = left - counts
    return _sorted(parts)

"""Partitioners: plain functions that split a dataset's train set among clients, registered in `PARTITIONERS`.

Signature: ``(dataset, num_clients, rng, **params) -> list[np.ndarray]``, one sorted int64 index array into
``dataset.x_train`` per client. The arrays are disjoint and together cover the train set. ``params`` are
keyword-only with defaults, so the registry can reject unknown names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.data.indices import ClientIndices
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import PARTITIONERS

#: Dirichlet draws to try before giving up on ``min_size``; each try is O(N), so this stays cheap.
MAX_DIRICHLET_TRIES = 1000


def _param(name: str, value: Any, ok: bool, fix: str) -> None:
    """Raise a `ConfigError` naming ``data.partition.params.<name>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"Invalid `data.partition.params.{name}={value!r}`: {fix}.")


def _labels(dataset: FederatedDataset, num_clients: int, min_per_client: int = 1) -> np.ndarray:
    """The train labels as numpy, after checking that ``num_clients`` clients can get a sample each."""
    n = len(dataset.y_train)
    if not 1 <= num_clients * min_per_client <= n:
        raise ConfigError(
            f"Invalid `data.num_clients={num_clients}`: the train set has {n} samples, too few to give each "
            f"client {min_per_client}; use at most {n // max(min_per_client, 1)} clients."
        )
    return dataset.y_train.numpy() if dataset.y_train.device.type == "cpu" else dataset.y_train.cpu().numpy()


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@PARTITIONERS.register("iid")
def iid(dataset: FederatedDataset, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle the train set and cut it into ``num_clients`` parts whose sizes differ by at most one.

    The IID baseline of McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629.

    Args:
        dataset: the dataset to split.
        num_clients: number of clients.
        rng: draws the shuffle.

    Returns:
        One sorted int64 index array per client.

    >>> import torch
    >>> y = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    >>> ds = FederatedDataset(torch.zeros(7, 1), y, torch.zeros(0, 1), y[:0], 4, (1,))
    >>> parts = iid(ds, 3, np.random.default_rng(0))
    >>> [len(p) for p in parts], sorted(np.concatenate(parts).tolist())
    ([3, 2, 2], [0, 1, 2, 3, 4, 5, 6])
    """
    n = len(_labels(dataset, num_clients))
    return _sorted(np.array_split(rng.permutation(n), num_clients))


def _dirichlet_once(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, max_size: int | None = None
) -> list[np.ndarray]:
    """One draw: for each class, split its shuffled samples among clients by proportions ~ Dir(alpha)."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    held = np.zeros(num_clients, dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(share) * len(idx)).astype(np.int64)[:-1]
        if max_size is not None:
            cuts = np.cumsum(capped_counts(np.diff(cuts, prepend=0, append=len(idx)), share, max_size - held))[:-1]
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].append(chunk)
            held[client] += len(chunk)
    return [np.concatenate(p) for p in parts]


def capped_counts(counts: np.ndarray, weights: np.ndarray, room: np.ndarray) -> np.ndarray:
    """``counts`` with none above ``room``: what a full client would get goes to the others by their ``weights``.

    Deterministic (no draws), so a cap never changes the random stream. Needs ``room.sum() >= counts.sum()``.

    >>> capped_counts(np.array([6, 3, 1]), np.array([0.6, 0.3, 0.1]), np.array([4, 9, 9])).tolist()
    [4, 5, 1]
    """
    out = np.minimum(counts, room)
    left = int(counts.sum() - out.sum())
    while left > 0:
        free = room - out
        w = weights * (free > 0)
        w = w / w.sum() if w.sum() > 0 else (free > 0) / (free > 0).sum()
        extra = np.minimum(np.floor(w * left).astype(np.int64), free)
        if extra.sum() == 0:  # fewer left than clients that would share it: one to the heaviest that has room
            extra[np.argmax(w)] = 1
        out += extra
        left -= int(extra.sum())
    return out


@PARTITIONERS.register("dirichlet")
def dirichlet(
    dataset: FederatedDataset,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    min_size: int = 1,
    max_size: int | None = None,
) -> list[np.ndarray]:
    """Label skew: each class is split among clients by proportions drawn from Dir(alpha), one draw per class.

    Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural Networks", ICML 2019,
    https://arxiv.org/abs/1905.12022 (``p_c ~ Dir_K(alpha)`` per class c), the "label distribution skew" of
    Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022,
    https://arxiv.org/abs/2102.02079, whose code also redraws until every client has ``min_size`` samples.
    (Hsu et al. 2019 draw per-client class proportions instead: `dirichlet_clients`.) Small ``alpha`` (0.1)
    gives each client few classes; large ``alpha`` (100) approaches IID. The whole draw is repeated with the
    same ``rng`` until every client has at least ``min_size`` samples (at most `MAX_DIRICHLET_TRIES` times).
    With ``max_size``, no client gets more: the part of a class that would overfill a client goes to the
    others in proportion to their own Dir(alpha) shares (`capped_counts`); the draws are unchanged.

    Args:
        dataset: the dataset to split.
        num_clients: number of clients.
        rng: draws the shuffles and proportions.
        alpha: Dirichlet concentration, > 0.
        min_size: the fewest samples any client may get, >= 0.
        max_size: the most samples any client may get (None: no cap); ``num_clients * max_size`` must cover the data.

    Returns:
        One sorted int64 index array per client.

    Raises:
        ConfigError: a bad param, or no draw met ``min_size`` within the allowed tries.

    >>> import torch
    >>> y = torch.tensor([0] * 6 + [1] * 6)
    >>> ds = FederatedDataset(torch.zeros(12, 1), y, torch.zeros(0, 1), y[:0], 2, (1,))
    >>> parts = dirichlet(ds, 3, np.random.default_rng(0), alpha=0.5, min_size=2)
    >>> sorted(np.concatenate(parts).tolist()) == list(range(12)), min(len(p) for p in parts) >= 2
    (True, True)
    """
    _param("alpha", alpha, isinstance(alpha, (int, float)) and alpha > 0, "use a concentration > 0, e.g. 0.5")
    _param("min_size", min_size, isinstance(min_size, int) and min_size >= 0, "use an integer >= 0, e.g. 1")
    labels = _labels(dataset, num_clients, max(min_size, 1))
    n = len(labels)
    fits = max_size is None or (isinstance(max_size, int) and max_size >= min_size and num_clients * max_size >= n)
    _param("max_size", max_size, fits,
           f"use null or an integer >= min_size with num_clients * max_size >= {n} samples (>= {-(-n // num_clients)})")
    for _ in range(MAX_DIRICHLET_TRIES):
        parts = _dirichlet_once(labels, num_clients, alpha, rng, max_size)
        if min(len(p) for p in parts) >= min_size:
            return _sorted(parts)
    raise ConfigError(
        f"Invalid `data.partition.params.alpha={alpha}`: no Dirichlet draw in {MAX_DIRICHLET_TRIES} tries gave "
        f"each of `data.num_clients={num_clients}` clients `min_size={min_size}` of {len(labels)} samples; "
        "raise `alpha`, lower `data.partition.params.min_size` or use fewer clients."
    )


@PARTITIONERS.register("shards")
def shards(
    dataset: FederatedDataset, num_clients: int, rng: np.random.Generator, *, shards_per_client: int = 2
) -> list[np.ndarray]:
    """Pathological non-IID: sort by label, cut into equal shards, deal ``shards_per_client`` to each client.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017, https://arxiv.org/abs/1602.05629 (MNIST: 200 shards of 300, 2 per client). As in the
    paper, a shard may straddle two labels when class sizes are not multiples of the shard size, so most
    (not all) clients see at most ``shards_per_client`` labels.

    Args:
        dataset: the dataset to split.
        num_clients: number of clients.
        rng: deals the shards.
        shards_per_client: shards given to each client, >= 1.

    Returns:
        One sorted int64 index array per client.

    >>> import torch
    >>> y = torch.tensor([3, 2, 1, 0, 3, 2, 1, 0])
    >>> ds = FederatedDataset(torch.zeros(8, 1), y, torch.zeros(0, 1), y[:0], 4, (1,))
    >>> parts = shards(ds, 2, np.random.default_rng(0), shards_per_client=2)
    >>> [len(p) for p in parts], [len(set(y[p].tolist())) for p in parts]
    ([4, 4], [2, 2])
    """
    _param("shards_per_client", shards_per_client, isinstance(shards_per_client, int) and shards_per_client >= 1,
           "use an integer >= 1, e.g. 2")  # fmt: skip
    labels = _labels(dataset, num_clients, shards_per_client)
    # Stable sort: within a label, samples keep their dataset order, so the shards do not depend on rng.
    pieces = np.array_split(np.argsort(labels, kind="stable"), num_clients * shards_per_client)
    dealt = rng.permutation(len(pieces)).reshape(num_clients, shards_per_client)
    return _sorted([np.concatenate([pieces[s] for s in row]) for row in dealt])


@PARTITIONERS.register("natural")
def natural(dataset: FederatedDataset, num_clients: int, rng: np.random.Generator) -> Sequence[np.ndarray]:
    """The dataset's own clients (e.g. the devices of FedProx's ``synthetic``); ``rng`` is unused.

    Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018, https://arxiv.org/abs/1812.01097,
    argue for evaluating on such natural partitions.

    Args:
        dataset: a dataset with ``client_indices``.
        num_clients: must equal the number of natural clients.
        rng: unused.

    Returns:
        One sorted int64 index array per client (a `ClientIndices` when the dataset's clients are one).

    Raises:
        ConfigError: the dataset has no clients of its own, or ``num_clients`` differs from their count.

    >>> import torch
    >>> y = torch.tensor([0, 1, 1])
    >>> natural_clients = [np.array([2, 0]), np.array([1])]
    >>> ds = FederatedDataset(torch.zeros(3, 1), y, torch.zeros(0, 1), y[:0], 2, (1,), natural_clients)
    >>> [p.tolist() for p in natural(ds, 2, np.random.default_rng(0))]
    [[0, 2], [1]]
    """
    if dataset.client_indices is None:
        raise ConfigError(
            "Invalid `data.partition.name=natural`: this dataset has no clients of its own; use "
            "`data.dataset=synthetic` or another partition (iid, dirichlet, shards)."
        )
    found = len(dataset.client_indices)
    if found != num_clients:
        raise ConfigError(
            f"Invalid `data.num_clients={num_clients}`: the dataset has {found} natural clients; "
            f"set `data.num_clients={found}`."
        )
    if isinstance(dataset.client_indices, ClientIndices):
        return dataset.client_indices.sorted()  # no array per client (10^6 clients: 1.6 s and 150 MB)
    return _sorted(list(dataset.client_indices))

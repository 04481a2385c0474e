"""A user's own module, named in a config's `plugins:` list: it registers a dataset, a partitioner and a callback."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import CALLBACKS, DATASETS, PARTITIONERS


@DATASETS.register("plugin.blobs")
def blobs(*, root: str, download: bool, num_clients: int, rng: np.random.Generator, n: int = 200) -> FederatedDataset:
    """Two Gaussian blobs in 4 dimensions (a user's dataset)."""
    y = rng.integers(0, 2, size=n + 50)
    x = rng.normal(size=(n + 50, 4)) + 2.0 * y[:, None]
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    return FederatedDataset(xt[:n], yt[:n], xt[n:], yt[n:], num_classes=2, input_shape=(4,))


@PARTITIONERS.register("plugin.deal")
def deal(dataset: FederatedDataset, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then deal the samples out like cards (a user's partitioner; it passes the partitioner contract)."""
    n = len(dataset.y_train)
    if num_clients > n:
        raise ConfigError(f"Expected `data.num_clients` <= {n} samples but got {num_clients}.")
    order = rng.permutation(n)
    return [np.sort(order[c::num_clients]) for c in range(num_clients)]


class RoundCounter:
    """Counts rounds and writes ``plugin/rounds_seen`` into the metrics (a user's callback, by `module:Class`)."""

    instances: list[RoundCounter] = []

    def __init__(self, start: int = 0) -> None:
        self.rounds = start
        RoundCounter.instances.append(self)

    def on_round_end(self, metrics: dict[str, Any]) -> None:
        self.rounds += 1
        metrics["plugin/rounds_seen"] = float(self.rounds)


@CALLBACKS.register("plugin.releaser")
class Releaser:
    """Keeps what the run hands to callbacks that take ``release`` (a registered callback)."""

    last: Releaser | None = None

    def __init__(self, release: list[Any], label: str = "") -> None:
        self.release, self.label = release, label
        Releaser.last = self

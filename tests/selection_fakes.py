"""A fake round loop for selector tests: contexts, probes and feedback without training anything.

Reusable by every selector test (and by the system.* selectors once merged): `simulate` drives any
registered selector through rounds with a partially available client set, deterministic probe losses,
fake `ClientResult`s and, for selectors that declare them, fake update vectors (``needs_updates``), label
histograms (``needs_label_histograms``), gradient statistics (``needs_grad_stats``) and update-norm probes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from csfl_fabric.selection.base import ClientSelector
from csfl_fabric.state import ClientHistory, ClientResult, Feedback, Selection, SelectionContext
from tests.system_fakes import fake_profiles

NUM_CLIENTS = 12
K = 4
UPDATE_DIM = 6
NUM_CLASSES = 4
#: Builds ``ctx.profiles`` for selectors with ``needs_profiles`` as ``factory(num_clients, seed)``.
PROFILE_FACTORY: Callable[[int, int], Any] | None = fake_profiles


def fake_loss(round_idx: int, client_id: int, batch_size: int | None = None) -> float:
    """A deterministic loss that differs by client and round (and slightly for a mini-batch estimate)."""
    base = 1.0 + ((7 * client_id + 3 * round_idx) % 11) / 10.0
    return base + (0.05 * (client_id % 3) if batch_size is not None else 0.0)


def fake_update(round_idx: int, client_id: int) -> torch.Tensor:
    """A deterministic update vector per (round, client): two client families point in different directions."""
    rng = np.random.default_rng([round_idx, client_id])
    direction = np.eye(UPDATE_DIM)[client_id % 2] * 3.0
    return torch.tensor(direction + rng.normal(0, 0.3, UPDATE_DIM), dtype=torch.float32)


def fake_histograms(num_clients: int) -> np.ndarray:
    """Label counts: client c holds 10 + c samples of class c % 4 and c of class (c + 1) % 4."""
    h = np.zeros((num_clients, NUM_CLASSES), dtype=np.int64)
    for c in range(num_clients):
        h[c, c % NUM_CLASSES] += 10 + c
        h[c, (c + 1) % NUM_CLASSES] += c
    return h


def fake_result(round_idx: int, client_id: int, num_samples: int, grad_stats: bool = False) -> ClientResult:
    """A client's fake report; with ``grad_stats`` its mean gradient (-update) and a client-dependent variance."""
    loss = fake_loss(round_idx, client_id)
    extra: dict[str, Any] = {}
    if grad_stats:
        mean = -fake_update(round_idx, client_id)
        extra = {"grad_mean": mean, "grad_sq_mean": float(mean.square().sum()) + (0.1 * client_id) ** 2}
    return ClientResult(client_id=client_id, num_samples=num_samples, num_steps=1, samples_processed=num_samples,
                        loss=loss * 0.9, loss_sq_sum=float(num_samples) * loss**2, **extra)


@dataclass
class FakeLoop:
    """The state a selector sees across rounds: history, selection generator and probed clients.

    ``probed`` lists the ids of every probe (loss or gradient), ``grad_probed`` those of gradient probes only.
    """

    seed: int = 0
    num_clients: int = NUM_CLIENTS
    num_samples: np.ndarray = field(default=None)  # type: ignore[assignment]  # default: 10, 20, ... per client
    batch_size: int = 16
    history: ClientHistory = field(init=False)
    rng: np.random.Generator = field(init=False)
    probed: list[list[int]] = field(default_factory=list)
    grad_probed: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_samples is None:
            self.num_samples = np.arange(1, self.num_clients + 1) * 10
        self.history = ClientHistory(self.num_samples)
        self.rng = np.random.default_rng(self.seed)

    def available(self, round_idx: int) -> np.ndarray:
        """All clients in even rounds; a seeded two thirds of them in odd rounds (independent of the selector)."""
        n = self.num_clients
        if round_idx % 2 == 0:
            return np.arange(n)
        return np.sort(np.random.default_rng([self.seed, round_idx]).choice(n, 2 * n // 3, replace=False))

    def context(self, round_idx: int, selector: ClientSelector, k: int = K) -> SelectionContext:
        """The round's context; profiles only for selectors that declare ``needs_profiles``."""

        def probe(ids: Any, batch_size: int | None = None, signal: str = "loss") -> np.ndarray:
            self.probed.append([int(c) for c in ids])
            if signal == "update_norm":
                return np.array([float(fake_update(round_idx, int(c)).norm()) for c in ids])
            return np.array([fake_loss(round_idx, int(c), batch_size) for c in ids])

        def probe_gradients(ids: Any) -> np.ndarray:
            self.probed.append([int(c) for c in ids])
            self.grad_probed.append([int(c) for c in ids])
            return np.stack([fake_update(round_idx, int(c)).numpy() for c in ids]) if len(ids) else \
                np.zeros((0, UPDATE_DIM), dtype=np.float32)

        profiles = None
        if getattr(selector, "needs_profiles", False) and PROFILE_FACTORY is not None:
            profiles = PROFILE_FACTORY(len(self.num_samples), self.seed)
        histograms = fake_histograms(len(self.num_samples)) if selector.needs_label_histograms else None
        return SelectionContext(round=round_idx, k=k, available=self.available(round_idx),
                                num_samples=self.num_samples.copy(), history=self.history, rng=self.rng,
                                probe=probe, profiles=profiles, batch_size=self.batch_size,
                                probe_gradients=probe_gradients, label_histograms=histograms)

    def feedback(self, round_idx: int, selection: Selection, selector: ClientSelector) -> Feedback:
        """Fake results for the selected clients; records them in the history like the orchestrator does."""
        results = [fake_result(round_idx, int(c), int(self.num_samples[c]), selector.needs_grad_stats)
                   for c in selection.ids.tolist()]
        self.history.record(round_idx, results)
        updates = None
        if selector.needs_updates:
            updates = {r.client_id: fake_update(round_idx, r.client_id) for r in results}
        return Feedback(round=round_idx, selection=selection, results=results, updates=updates)

    def run(self, selector: ClientSelector, rounds: range, k: int = K) -> list[tuple[SelectionContext, Selection]]:
        """Select and feed back for each round of ``rounds``; returns each round's context and selection."""
        out = []
        for r in rounds:
            ctx = self.context(r, selector, k)
            selection = selector.select(ctx)
            selector.update(self.feedback(r, selection, selector))
            out.append((ctx, selection))
        return out

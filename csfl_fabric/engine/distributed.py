"""Several processes (CPU cores, GPUs, nodes) share each round's clients through Fabric's DDP strategy.

In federated learning every rank trains *different* clients for different numbers of batches, so the
model must not be wrapped in ``DistributedDataParallel``: DDP would all-reduce the gradients on every
backward and hang as soon as two ranks run different numbers of batches. `FederatedDDPStrategy` is
Fabric's own DDP strategy (its launchers: its own subprocesses, ``torchrun``, SLURM; its cluster
environments, process group, precision and collectives) with the module left unwrapped. The ranks
meet once a round, in `Ranks`:

1. every rank computes the same selection from the same seeded streams;
2. `split_clients` hands each rank a share of the cohort balanced by sample count;
3. each rank folds its clients into its aggregator's running sum; the sums are all-reduced;
4. the clients' results (and, for selectors that need them, their updates) are gathered to every rank in
   selection order (for the selector and history).

So every rank holds the same state after every round (global params, selector, history), evaluates
the same model, and any rank could write the run directory; global rank 0 does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import override

from csfl_fabric.aggregation import Aggregator
from csfl_fabric.engine.fabric import DDPStrategy, Fabric
from csfl_fabric.errors import RankFailureError
from csfl_fabric.state import ClientResult, RunState, Selection

T = TypeVar("T")


class FederatedDDPStrategy(DDPStrategy):
    """Fabric's DDP strategy without the DDP wrapper: processes and collectives, but independent models.

    Two timeouts, because starting takes much longer than a round's wait should: the process group
    (rendezvous, the first broadcast) waits ``startup_timeout_s`` for every process to start (imports,
    data loading); the round's collectives run on `round_group`, which fails after ``timeout_s``, so that
    a rank that died or hangs stops the others instead of blocking them forever.

    Args:
        timeout_s: seconds a round's collective waits for the other ranks.
        startup_timeout_s: seconds the processes wait for each other to start.
        **kwargs: passed to `lightning.fabric.strategies.DDPStrategy`.
    """

    def __init__(self, timeout_s: float = 300.0, startup_timeout_s: float = 600.0, **kwargs: Any) -> None:
        super().__init__(timeout=timedelta(seconds=startup_timeout_s), **kwargs)
        self.timeout_s = timeout_s
        self.round_group: Any = None

    @override
    def setup_environment(self) -> None:
        """Join the process group, then make the group with the short timeout for the rounds."""
        super().setup_environment()
        self.round_group = torch.distributed.new_group(timeout=timedelta(seconds=self.timeout_s))

    @override
    def setup_module(self, module: nn.Module) -> nn.Module:  # type: ignore[override]  # not a DDP, on purpose
        """Leave the module as it is (Fabric has moved it to this rank's device): no gradient all-reduce."""
        return module


def fabric_strategy(
    strategy: str, devices: int, num_nodes: int, timeout_s: float, startup_timeout_s: float
) -> str | FederatedDDPStrategy:
    """What to pass as Fabric's ``strategy``: `FederatedDDPStrategy` for ``ddp`` or for several processes."""
    if strategy == "ddp" or (strategy == "auto" and devices * num_nodes > 1):
        return FederatedDDPStrategy(timeout_s=timeout_s, startup_timeout_s=startup_timeout_s)
    return strategy


def launch(fabric: Fabric) -> None:
    """Start the other local processes (a no-op in one process) and join the process group.

    Processes started by ``torchrun`` or SLURM are not started again; under Lightning's ``fabric run``
    launcher, Fabric has already joined the group when it was built and ``launch`` must not be called.
    """
    if os.environ.get("LT_CLI_USED", "0") != "1":
        fabric.launch()


def split_clients(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Positions of the cohort each rank trains, balanced by sample count (greedy longest-processing-time).

    Clients are taken largest first (ties: earlier position first) and each goes to the rank with the
    fewest samples so far (ties: the lower rank); each rank's positions are returned in selection order.
    Deterministic, so every rank computes the same split without talking to the others.

    >>> split_clients([5, 1, 4, 3, 3], world_size=2)
    [[0, 4], [1, 2, 3]]
    >>> split_clients([7], world_size=3)
    [[0], [], []]
    """
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for position in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(position)
        loads[rank] += int(sizes[position])
    return [sorted(share) for share in shares]


class Ranks:
    """The once-a-round meeting of the ranks; with one process every method is a cheap local no-op.

    Args:
        fabric: the run's Fabric, launched.
    """

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.world_size = fabric.world_size
        self.rank = fabric.global_rank
        self.timeout_s: float | None = getattr(fabric.strategy, "timeout_s", None)
        self.group = getattr(fabric.strategy, "round_group", None)  # None: the default group

    def share(self, selection: Selection, num_samples: np.ndarray) -> list[int]:
        """Positions in ``selection.ids`` that this rank trains (all of them in a single process)."""
        if self.world_size == 1:
            return list(range(len(selection.ids)))
        return split_clients(num_samples[selection.ids].tolist(), self.world_size)[self.rank]

    def combine(self, aggregator: Aggregator, results: dict[int, ClientResult], selection: Selection,
                round_idx: int, updates: dict[int, Tensor] | None = None) -> list[ClientResult]:
        """Sum the ranks' running sums in ``aggregator``; return every rank's client results in selection order.

        Args:
            aggregator: this rank's aggregator, holding the sums of the clients it trained.
            results: this rank's results by position in the selection.
            selection: the round's selection (the same on every rank, which is checked).
            round_idx: the round, for error messages.
            updates: this rank's client updates by client id, if the selector needs them; filled in place
                with every rank's, in selection order.

        Raises:
            RankFailureError: another rank failed, was killed or timed out, or selected different clients.
        """
        if self.world_size == 1:
            return [results[i] for i in sorted(results)]
        aggregator.reduce(lambda t: self._all_reduce(t, "sum", "all-reduce of the client sums", round_idx))
        gathered: list[Any] = [None] * self.world_size
        digest = hashlib.sha1(np.ascontiguousarray(selection.ids).tobytes()).hexdigest()
        self._collective("gather of the client results", round_idx,
                         lambda: torch.distributed.all_gather_object(gathered, (digest, results, updates), self.group))
        digests = [d for d, _, _ in gathered]
        if len(set(digests)) > 1:
            raise RankFailureError(
                f"Round {round_idx}: the ranks selected different clients (digests {digests}). A selection must "
                "depend only on the seeded selection stream and on state every rank shares, never on the rank."
            )
        merged = {i: r for _, part, _ in gathered for i, r in part.items()}
        ordered = [merged[i] for i in sorted(merged)]  # a client that reported nothing is simply absent
        if updates is not None:
            every = {c: u for _, _, part in gathered for c, u in part.items()}
            updates.clear()
            updates.update((r.client_id, every[r.client_id]) for r in ordered)
        return ordered

    def sync_stop(self, state: RunState) -> None:
        """Stop on every rank if a callback asked to stop on any rank (else the others would wait forever)."""
        if self.world_size == 1:
            return
        flag = torch.tensor(float(state.should_stop), device=self.fabric.device)
        stop = self._all_reduce(flag, "max", "stop vote", state.round - 1)
        if bool(stop) and not state.should_stop:
            state.should_stop, state.stop_reason = True, "stop requested on another rank"

    def _all_reduce(self, tensor: Tensor, op: str, what: str, round_idx: int) -> Tensor:
        # fabric.all_reduce works in place on a tensor (and returns it): the input is overwritten.
        return cast(Tensor, self._collective(what, round_idx, lambda: self.fabric.all_reduce(tensor, self.group, op)))

    def _collective(self, what: str, round_idx: int, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RuntimeError as e:  # gloo/NCCL report a dead peer or a timeout as RuntimeError subclasses
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RankFailureError(
                f"Rank {self.rank}: the {what} in round {round_idx} failed because another rank crashed, was killed "
                f"or did not arrive within fabric.timeout_s={self.timeout_s} s; its own output names the cause. "
                f"({type(e).__name__}: {first})"
            ) from e

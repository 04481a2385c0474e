"""A bare, hand-written PyTorch FedAvg loop, the baseline every speed figure is a ratio against, and a floor.

`bare_fedavg`: no Fabric, no callbacks, no logging: one reused model, weights copied in, SGD, a weighted sum.
`batched_floor`: what no backend that trains a round's clients together can undercut (see there).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bare_fedavg(model: nn.Module, x: Tensor, y: Tensor, parts: list[np.ndarray], *, rounds: int, per_round: int,
                batch_size: int, lr: float, seed: int = 0, autocast: bool = False,
                rng: np.random.Generator | None = None, clock: Callable[[], float] = time.perf_counter,
                before_round: Callable[[], None] | None = None) -> list[float]:
    """Run ``rounds`` rounds of FedAvg (1 local epoch, SGD) and return the seconds of each round.

    Runs on ``x``'s device (``model`` must be there too); ``autocast`` runs the forward in bfloat16 autocast.
    ``rng`` draws the clients of each round: pass csfl_fabric's selection stream to train the same clients
    as `heuristic.random` (per-round cost depends on the sizes of the chosen clients). ``clock`` reads the time
    (``time.process_time`` counts only this process's CPU time, robust on a machine shared with others).
    ``before_round`` is called before each round, outside its time (the speed bench's lockstep).
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    idx = [torch.as_tensor(p, dtype=torch.long, device=x.device) for p in parts]
    tensors = list(model.state_dict(keep_vars=True).values())
    global_w = [t.detach().clone() for t in tensors]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def one_round() -> None:
        nonlocal global_w
        chosen = rng.choice(len(parts), size=per_round, replace=False)
        acc = [torch.zeros_like(t, dtype=torch.float32) for t in global_w]
        total = 0.0
        for c in chosen:
            with torch.no_grad():
                torch._foreach_copy_(tensors, global_w)
            client = idx[c]
            for batch in _batches(client, gen, batch_size):
                _sgd_step(model, opt, x, y, batch, autocast)
            with torch.no_grad():
                torch._foreach_add_(acc, [t.detach().float() for t in tensors], alpha=float(len(client)))
            total += len(client)
        global_w = [a / total for a in acc]

    return _timed(one_round, rounds, x.device, clock, before_round)


def _batches(client: Tensor, gen: torch.Generator, batch_size: int) -> list[Tensor]:
    """One local epoch's mini-batches of ``client``'s indices, in a fresh random order."""
    perm = client[torch.randperm(len(client), generator=gen).to(client.device)]
    return [perm[b : b + batch_size] for b in range(0, len(perm), batch_size)]


def batched_floor(model: nn.Module, x: Tensor, y: Tensor, parts: list[np.ndarray], *, rounds: int, per_round: int,
                  batch_size: int, lr: float, seed: int = 0, autocast: bool = False,
                  rng: np.random.Generator | None = None, clock: Callable[[], float] = time.perf_counter,
                  before_round: Callable[[], None] | None = None) -> list[float]:
    """Seconds per round of a lower bound on training a round's clients together (not FedAvg: a cost only).

    The clients and batches of `bare_fedavg` (same ``rng``, ``seed``), but local step ``t`` of all of them is
    one forward and backward of their ``t``-th batches concatenated, through one shared set of weights in
    channels-last order (the faster CPU layout), and one SGD step. A cohort backend does at least this work
    and more: each client has weights of its own after its first step, so it needs per-client gradients
    (the same arithmetic, split into groups) and per-client updates, besides any bookkeeping. A round can
    then take no less time than this floor, whatever the batching. Arguments as `bare_fedavg`'s.
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    idx = [torch.as_tensor(p, dtype=torch.long, device=x.device) for p in parts]
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def one_round() -> None:
        chosen = rng.choice(len(parts), size=per_round, replace=False)
        per_client = [_batches(idx[c], gen, batch_size) for c in chosen]
        for t in range(max(map(len, per_client), default=0)):
            _sgd_step(model, opt, x, y, torch.cat([b[t] for b in per_client if len(b) > t]), autocast)

    return _timed(one_round, rounds, x.device, clock, before_round)


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, batch: Tensor,
              autocast: bool) -> None:
    """One SGD step of ``model`` on the samples ``batch`` of ``(x, y)``; the forward in bfloat16 if ``autocast``."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        logits = model(x.index_select(0, batch))
    loss = F.cross_entropy(logits.float(), y.index_select(0, batch))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _timed(one_round: Callable[[], None], rounds: int, device: torch.device, clock: Callable[[], float],
           before_round: Callable[[], None] | None) -> list[float]:
    """Run ``one_round`` ``rounds`` times; the seconds of each, ``before_round`` outside them."""
    times = []
    for _ in range(rounds):
        if before_round is not None:
            before_round()
        start = clock()
        one_round()
        if device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: the round ends when they have
        times.append(clock() - start)
    return times

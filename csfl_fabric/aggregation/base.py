"""Streaming aggregation of client params, and server optimizers on the averaged pseudo-gradient.

Lifecycle of one round (torchmetrics style)::

    aggregator.reset(global_params)
    for each client: aggregator.update(params, weight)   # the caller then drops params
    aggregator.reduce(all_reduce_sum)                    # only when several processes share the round
    global_params = aggregator.compute()

Memory is O(model) whatever the number of clients: a running fp32 sum ``sum_i w_i p_i`` (one flat buffer,
so that ``reduce`` is one collective) and the total weight; no client's params are kept.

Entries that are not floating point (BatchNorm's ``num_batches_tracked``) are not averaged: the new global
keeps the old global's value. This is order-, rank- and client-independent, so it survives ``reduce``
(a max over clients would not be a sum), and torch's BatchNorm only reads that counter when ``momentum=None``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from csfl_fabric.state import Params
from csfl_fabric.training.flat import ChunkRow, FlatParams, Layout, flat_of


def _check_total_weight(total: float) -> None:
    if not total > 0:
        raise ValueError(
            f"Expected the total aggregation weight to be > 0 but got {total}: no client called `update` this "
            "round, or every client had weight 0 (e.g. no samples). Check the selection and the client weights."
        )


def weighted_mean(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Return ``sum_i w_i t_i / sum_i w_i`` in fp32 (the FedAvg average, non-streaming reference).

    >>> weighted_mean([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])], [1.0, 3.0])
    tensor([2.5000, 5.0000])

    Raises:
        ValueError: the weights sum to zero.
    """
    total = float(sum(weights))
    _check_total_weight(total)
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights, strict=True):
        acc.add_(t.to(torch.float32), alpha=float(w))
    return acc / total

class Aggregator(ABC):
    """Folds client params into a weighted mean as they arrive, then applies a server step.

    Subclasses implement `step` and keep any server optimizer state in ``self.state`` (name -> params, fp32),
    which `state_dict` saves. The running sums are not saved: checkpoints are taken between rounds.
    """

    def __init__(self) -> None:
        self.state: dict[str, Params] = {}
        self.num_rounds = 0
        self._global: Params | None = None
        self._layout: Layout | None = None
        self._flat: Tensor | None = None  # all running sums in one buffer: one collective in `reduce`
        self._sums: Params = {}  # views into _flat, for the floating-point entries
        self._total = 0.0  # a Python float (float64): sample counts stay exact, and adding to it costs no kernel
        self._result: Params | None = None
        self._absolute = False
        # Rows of a cohort chunk not yet folded in: (the chunk, row indices, weights); see `_fold_chunk`.
        self._pending: tuple[dict[str, Tensor], list[int], list[float]] | None = None

    def reset(self, global_params: Params, absolute: bool = False) -> None:
        """Start a round from ``global_params`` (copied, so later changes to them do not leak in).

        Args:
            global_params: the round's global model.
            absolute: the weights are an unbiased estimator's absolute coefficients a_k (`Selection.absolute_weights`):
                `compute` averages ``sum_k a_k p_k + (1 - sum_k a_k) global`` instead of dividing by ``sum_k a_k``.
        """
        self._absolute = absolute
        # The sums are laid out as the global params' buffer: a client laid out alike is folded in by one add.
        if isinstance(global_params, FlatParams):
            self._global, self._layout = global_params.clone(), global_params.layout
        else:
            self._global = {k: v.detach().clone() for k, v in global_params.items()}
            self._layout = Layout.of(self._global)
        floats = [self._global[k] for k in self._layout.names]
        device = floats[0].device if floats else torch.device("cpu")
        self._flat = torch.zeros(self._layout.numel, dtype=torch.float32, device=device)
        self._sums = self._layout.views(self._flat)
        self._total = 0.0
        self._result = None
        self._pending = None

    def update(self, params: Params, weight: float) -> None:
        """Add ``weight * params`` to the running sums; ``params`` may be dropped as soon as this returns.

        A client of weight 0 is skipped, so that a diverged client's NaNs cannot reach the sum. The rows of a
        cohort chunk (`ChunkRow`) are kept by reference and folded in together, when another chunk's row
        comes or at `reduce` / `compute`.

        Raises:
            ValueError: ``weight`` is negative or not finite, or ``params`` lacks or adds entries.
            RuntimeError: `reset` was not called since the last `compute`.
        """
        if self._global is None or self._flat is None:
            raise RuntimeError("Call `reset(global_params)` before `update` (once per round, before the clients).")
        weight = float(weight)
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"Expected `weight` to be a finite number >= 0 but got {weight}.")
        flat = flat_of(params, self._layout)
        if flat is None:
            missing, unknown = self._sums.keys() - params.keys(), params.keys() - self._global.keys()
            if missing or unknown:
                raise ValueError(f"Client params do not match the global params: missing {sorted(missing)}, "
                                 f"unknown {sorted(unknown)}.")
        if weight == 0:
            return
        if isinstance(params, ChunkRow) and params.chunk.keys() >= self._sums.keys():
            if self._pending is not None and self._pending[0] is not params.chunk:
                self._fold_chunk()
            if self._pending is None:
                self._pending = (params.chunk, [], [])
            self._pending[1].append(params.index)
            self._pending[2].append(weight)
        elif flat is not None:
            self._flat.add_(flat.to(self._flat.device), alpha=weight)
        else:
            dst = list(self._sums.values())
            src = [params[k].detach().to(device=d.device, dtype=torch.float32) for k, d in zip(self._sums, dst,
                                                                                               strict=True)]
            torch._foreach_add_(dst, src, alpha=weight)
        self._total += weight

    def _fold_chunk(self) -> None:
        """Add the pending rows of a chunk: one matrix-vector product per entry instead of one add per client.

        Measured for 50 W-big clients: 1.7 ms instead of 3.2 ms of adds (each row is read once either way, but
        the adds also read and write the sum once per client). Rows left out (diverged or weight 0 clients,
        whose NaNs would survive a zero weight in a product) break the run: then the others are gathered first.
        """
        if self._pending is None:
            return
        chunk, index, weights = self._pending
        self._pending = None
        device = self._flat.device  # type: ignore[union-attr]  # set by reset
        # Rows that cover a block of the chunk, in any order (the cohort trainer yields its clients in the order
        # given, not in its rows' order): the block itself, with the weights put in row order; no gather.
        first = min(index)
        block = sorted(index) == list(range(first, first + len(index)))
        if block:
            in_rows = [0.0] * len(index)
            for i, weight in zip(index, weights, strict=True):
                in_rows[i - first] = weight
            weights = in_rows
        w = torch.tensor(weights, dtype=torch.float32, device=device)
        for k, acc in self._sums.items():
            t = chunk[k]
            if t.stride(0) == 0:  # an entry every client kept at the same value (a buffer)
                acc.add_(t[0].to(device=device, dtype=torch.float32), alpha=sum(weights))
                continue
            rows = t.reshape(len(t), -1)
            rows = rows[first : first + len(index)] if block else rows[torch.tensor(index, device=rows.device)]
            acc.add_(torch.mv(rows.to(device=device, dtype=torch.float32).T, w).view(acc.shape))

    def reduce(self, fn: Callable[[Tensor], Tensor | None]) -> None:
        """Replace the running sums and total weight by ``fn`` of them, e.g. a sum all-reduce across processes.

        ``fn`` may work in place and return None (``torch.distributed.all_reduce``) or return a new tensor
        (``fabric.all_reduce``). Every process must call it, also one that trained no client this round.
        """
        self._fold_chunk()
        device = self._flat.device if self._flat is not None else torch.device("cpu")
        total = torch.tensor(self._total, dtype=torch.float64, device=device)
        for t in (self._flat, total):
            if t is None:
                continue
            out = fn(t)
            if out is not None and out is not t:
                t.copy_(out)
        self._total = float(total)

    def compute(self) -> Params:
        """Return the new global params, in the global params' dtypes; a second call returns the same result.

        Raises:
            ValueError: the total weight is zero.
            RuntimeError: `reset` was never called.
        """
        if self._result is not None:
            return self._result
        if self._global is None or self._flat is None or self._layout is None:
            raise RuntimeError("Call `reset(global_params)` and `update` before `compute`.")
        self._fold_chunk()
        _check_total_weight(self._total)
        names = list(self._layout.names)
        x = [self._global[k].to(device=self._flat.device, dtype=torch.float32) for k in names]
        if self._absolute:  # sum_k a_k p_k + (1 - sum_k a_k) x: the global model keeps the mass the weights leave
            torch._foreach_add_(list(self._layout.views(self._flat).values()), x, alpha=1.0 - self._total)
            self._total = 1.0
        mean = list(self._layout.views(self._flat.div_(self._total)).values())  # the sums are not needed after
        new = self.step(names, x, mean)
        self.num_rounds += 1
        others = {k: v for k, v in self._global.items() if k not in self._sums}
        if isinstance(self._global, FlatParams):
            out = torch.empty_like(self._global.flat)
            torch._foreach_copy_(list(self._layout.views(out).values()), new)  # casts to the global dtype
            self._result = FlatParams.of(out, self._layout, others)
        else:
            by_name = dict(zip(names, new, strict=True))
            self._result = {k: by_name[k].to(device=v.device, dtype=v.dtype) if k in by_name else v
                            for k, v in self._global.items()}
        self._global, self._flat, self._sums = None, None, {}  # free O(model) until the next reset
        return self._result

    @abstractmethod
    def step(self, names: list[str], x: list[Tensor], mean: list[Tensor]) -> list[Tensor]:
        """Return the new global values (fp32) of the floating-point entries ``names``; called once a round.

        Args:
            names: entry names, in the order of ``x`` and ``mean``.
            x: the current global values, in fp32; do not change them in place.
            mean: the clients' weighted mean, in fp32; yours to change in place.
        """

    def state_dict(self) -> dict[str, Any]:
        """Server optimizer state and round count, for an exact resume."""
        return {
            "type": type(self).__name__,
            "num_rounds": self.num_rounds,
            "state": {b: {k: t.detach().clone() for k, t in buf.items()} for b, buf in self.state.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; buffers move to the params' device at the next step."""
        if state_dict.get("type", type(self).__name__) != type(self).__name__:
            raise ValueError(
                f"Cannot load a `{state_dict['type']}` aggregator state into `{type(self).__name__}`: "
                "resume with the aggregator the checkpoint was written by."
            )
        self.num_rounds = int(state_dict["num_rounds"])
        self.state = {b: {k: t.clone() for k, t in buf.items()} for b, buf in state_dict["state"].items()}

    def _buffer(self, name: str, names: list[str], like: list[Tensor], fill: float) -> list[Tensor]:
        """The fp32 server buffer ``name`` for ``names``, created as ``fill`` on first use."""
        buf = self.state.setdefault(name, {})
        for k, x in zip(names, like, strict=True):
            if k not in buf:
                buf[k] = torch.full_like(x, fill, dtype=torch.float32)
            elif buf[k].device != x.device:
                buf[k] = buf[k].to(x.device)
        return [buf[k] for k in names]

def check_positive(name: str, value: float) -> None:
    """Raise a `ValueError` naming ``aggregator.params.<name>`` unless ``value`` is finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Expected `aggregator.params.{name}` to be > 0 but got {value}.")


def check_beta(name: str, value: float) -> None:
    """Raise a `ValueError` naming ``aggregator.params.<name>`` unless ``value`` is in [0, 1)."""
    if not 0 <= value < 1:
        raise ValueError(f"Expected `aggregator.params.{name}` to be in [0, 1) but got {value}.")

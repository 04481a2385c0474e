"""CohortTrainer: the clients of a round trained together with ``torch.func`` over stacked params.

Each chunk of ``cohort_size`` clients becomes one model with a leading client dimension on every
parameter. A local step runs ``vmap(grad(functional_call(...)))`` over that dimension on a batch of shape
``(clients, batch, ...)``. Uneven clients pad little: the chunk's rows are its clients longest first, so a
step trains only the rows ``0:m`` of the clients still training (a finished client is neither computed nor
moved, so momentum, weight decay and Adam leave it alone), and a later step whose batches differ in size is
cut into blocks of similar width (`split_rows`), each padded only to its widest batch; a per-sample mask
keeps that padding out of losses and gradients. Every client sees exactly the batches the sequential trainer
gives it (`ClientData.batch_indices`), so both backends agree to float rounding on dropout-free models;
clients are yielded in the order given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from typing_extensions import override

from csfl_fabric.data.store import ClientData
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.errors import ConfigError
from csfl_fabric.state import ClientResult, Params
from csfl_fabric.training.flat import ChunkRow, l2_norm
from csfl_fabric.training.optim import FunctionalOptimizer, Rows
from csfl_fabric.training.sequential import ClientTrainer, GradStats
from csfl_fabric.training.settings import TrainSettings


def check_cohort_model(model: nn.Module) -> None:
    """Raise a `ConfigError` naming the first module that the cohort backend cannot train.

    BatchNorm (and InstanceNorm with running statistics) update buffers in place during the forward
    pass, and BatchNorm's batch statistics would also mix in the padding of uneven clients. RNNs (LSTM, GRU)
    run fused kernels that vmap cannot batch.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            # Measured (torch 2.14, CPU): vmap has no batching rule for the fused RNN kernel (aten::mkldnn_rnn_layer;
            # cuDNN's _cudnn_rnn on CUDA), falls back to a loop over clients and warns; 8 char_lstm clients took
            # 2.1 s a step against 1.1 s for a plain loop. Training them one by one is what `sequential` does, faster.
            raise ConfigError(
                f"Module `{name}` ({type(module).__name__}) is not supported by `train.backend=cohort`: torch.func's "
                "vmap has no batching rule for the fused RNN kernels, so it would train the clients one by one, "
                "slower than the sequential backend. Use `train.backend=sequential`."
            )
        batch_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if batch_norm or (isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats):
            raise ConfigError(
                f"Module `{name}` ({type(module).__name__}) is not supported by `train.backend=cohort`: its running "
                "statistics change during the forward pass and its batch statistics would include the padding of "
                "uneven clients. Use `train.backend=sequential`, or a model without it (e.g. "
                "`train.model_params.norm=group` for resnet18)."
            )


def split_rows(widths: Sequence[int], call_cost: float) -> list[tuple[int, int]]:
    """Cut rows of batch widths ``widths`` into contiguous blocks, each to be padded to its widest row.

    Minimises ``call_cost * blocks + sum(rows * width)`` over the blocks: a block is one vectorised call, which
    costs about as much as ``call_cost`` padded samples besides its samples. Exact, by dynamic programming over
    the runs of equal widths (at most ``batch_size`` runs when the widths fall, as the cohort orders them).

    >>> split_rows([16, 16, 15, 4, 4], call_cost=16)   # one block: 16 + 5 * 16 = 96; these two: 32 + 48 + 8 = 88
    [(0, 3), (3, 5)]
    >>> split_rows([2, 2, 1], call_cost=16)
    [(0, 3)]
    """
    runs: list[tuple[int, int]] = []  # (first row, width)
    for i, w in enumerate(widths):
        if not runs or runs[-1][1] != w:
            runs.append((i, w))
    ends = [start for start, _ in runs[1:]] + [len(widths)]
    best, cut = [0.0], [0]  # best[j]: cost of the rows before run j; cut[j]: where its last block starts
    for j in range(len(runs)):
        options = []
        widest = 0
        for i in range(j, -1, -1):
            widest = max(widest, runs[i][1])
            options.append((best[i] + call_cost + (ends[j] - runs[i][0]) * widest, i))
        cost, i = min(options)
        best.append(cost)
        cut.append(i)
    blocks, j = [], len(runs)
    while j > 0:
        i = cut[j]
        blocks.append((runs[i][0], ends[j - 1]))
        j = i
    return blocks[::-1]


@dataclass(frozen=True)
class _Block:
    """One vectorised call: plan rows ``start:stop`` at one local step; ``index``/``mask`` are ``(rows, width)``."""

    start: int
    stop: int
    index: Tensor
    mask: Tensor


@dataclass(frozen=True)
class _Plan:
    """A chunk's batches, its clients reordered so that little is padding.

    Rows are the clients longest first (most local steps), so the clients still training at step ``t`` are
    rows ``0:m_t`` and a finished client costs nothing; among equally long ones the fullest last batch comes
    first, so a step's partial batches fall in width and `split_rows` cuts each later step into few blocks,
    each padded only to its own widest batch. ``rows[i]`` is the row of the chunk's client ``i``.
    """

    steps: list[list[_Block]]
    rows: list[int]
    num_steps: list[int]  # by row
    samples: list[int]  # by row

    @classmethod
    def of(cls, clients: Sequence[ClientData], s: TrainSettings, call_cost: float) -> _Plan:
        per_client = [list(c.batch_indices(s.batch_size, epochs=s.local_epochs, steps=s.local_steps)) for c in clients]
        order = sorted(range(len(clients)), key=lambda i: (-len(per_client[i]), -len(per_client[i][-1]) if
                                                           per_client[i] else 0))
        batches = [per_client[i] for i in order]  # by row
        shape: list[list[tuple[int, int, list[int]]]] = []  # per step: (start, stop, widths) of each block
        for t in range(len(batches[0]) if batches else 0):
            widths = [len(b[t]) for b in batches if len(b) > t]  # a prefix of the rows: longest first
            # The first step stays one block: then its gradients become the chunk's params (see `_fit_chunk`);
            # cut, it would need a buffer of its own, which cost more than the padding saved (W-big: 0.76x
            # against 0.68x of the bare loop; W the same, measured).
            shape.append([(a, z, widths[a:z]) for a, z in split_rows(widths, call_cost if t else math.inf)])
        # Built on the host and moved once, with one gather of the chunk's samples: per-block tensors on the
        # device would cost a kernel launch each (CUDA). A padded entry points at the chunk's first sample.
        flat = [b[t] for t, blocks in enumerate(shape) for a, z, _ in blocks for b in batches[a:z]]
        masks, positions, offset = [], [], 0
        for _, _, widths in (block for blocks in shape for block in blocks):
            lengths = torch.tensor(widths)
            mask = torch.arange(max(widths)) < lengths.unsqueeze(1)
            starts = torch.cumsum(lengths, 0) - lengths + offset
            positions.append(torch.where(mask, starts.unsqueeze(1) + torch.arange(mask.shape[1]), 0).reshape(-1))
            masks.append(mask)
            offset += int(lengths.sum())
        steps: list[list[_Block]] = [[] for _ in shape]
        if flat:
            device = flat[0].device
            index = torch.cat(flat)[torch.cat(positions).to(device)]
            mask_all = torch.cat([m.reshape(-1) for m in masks]).to(device)
            spans = [m.numel() for m in masks]
            parts = zip(index.split(spans), mask_all.split(spans), masks, strict=True)
            blocks = ((t, a, z) for t, bs in enumerate(shape) for a, z, _ in bs)
            for (t, a, z), (ix, mk, m) in zip(blocks, parts, strict=True):
                steps[t].append(_Block(a, z, ix.view(m.shape), mk.view(m.shape)))
        rows = [0] * len(order)
        for row, i in enumerate(order):
            rows[i] = row
        return cls(steps, rows, [len(b) for b in batches], [sum(len(x) for x in b) for b in batches])


class CohortTrainer(ClientTrainer):
    """Trains the clients of a round together, ``cohort_size`` at a time, with ``torch.func``.

    Same public surface as `ClientTrainer` (``fit``, ``fit_many``, ``evaluate``, ``losses``); evaluation is
    inherited. SGD (momentum, weight decay), FedProx's ``mu``, Adam and gradient-norm clipping are written
    functionally over the client dimension. Dropout draws different masks per client (``randomness="different"``).

    Args:
        fabric: the run's Fabric (device, precision).
        model: a freshly built model without BatchNorm (see `check_cohort_model`).
        settings: local-training hyperparameters.
        num_classes: for the evaluation metrics.
        cohort_size: clients trained together; memory grows linearly with it (params, grads, optimizer state).
        split_cost: what one more vectorised call costs, in padded samples (`split_rows`). None: 16 on a CPU
            (measured for the small CNN: a call ~1.4 ms, a sample ~0.08 ms), ``inf`` on a GPU (a padded sample
            there costs next to nothing and a call its kernel launches), which never cuts a step.
    """

    #: vmap's batched convolutions gain nothing from channels-last weights (measured): the cohort keeps row-major ones.
    CHANNELS_LAST = False

    def __init__(
        self, fabric: Fabric, model: nn.Module, settings: TrainSettings, num_classes: int, cohort_size: int = 64,
        split_cost: float | None = None,
    ) -> None:
        if cohort_size < 1:
            raise ConfigError(f"Expected `train.cohort_size` to be >= 1 but got {cohort_size}.")
        if split_cost is not None and not split_cost >= 0:
            raise ValueError(f"Expected `split_cost` to be >= 0 but got {split_cost}.")
        check_cohort_model(model)
        super().__init__(fabric, model, settings, num_classes)
        self.cohort_size = cohort_size
        cpu = fabric.device.type == "cpu"
        self.split_cost = float(split_cost) if split_cost is not None else 16.0 if cpu else math.inf
        self._buffer_keys = [k for k in self.keys if k not in set(self._param_keys)]
        # in_dims: params batched over clients (shared in the first step, when all clients still hold the
        # global params: no stacked copy to make, and the forward reads one set of weights), buffers shared,
        # inputs/labels/mask batched.
        self._grad_step: dict[bool, Callable[..., tuple[Params, Tensor]]] = {
            stacked: vmap(grad(self._loss, has_aux=True), in_dims=(0 if stacked else None, None, 0, 0, 0),
                          randomness="different")
            for stacked in (False, True)
        }
        self._grad_one = grad(self._loss, has_aux=True)  # a block of one client (see `_grads`)

    def _loss(self, params: Params, buffers: Params, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # One client's masked mean loss: padded samples add exact zeros to the loss and the gradient.
        with self._precision.forward_context():
            logits = functional_call(self._forward, (params, buffers), (self._precision.convert_input(x),))
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        weights = mask.to(losses.dtype)
        return (losses * weights).sum() / weights.sum().clamp(min=1.0), losses.detach()

    def _grads(self, stacked: bool, params: Params, buffers: Params, x: Tensor, y: Tensor, mask: Tensor
               ) -> tuple[Params, Tensor]:
        """Each row's gradients and per-sample losses, with a leading row dimension, for a block of rows."""
        if len(x) > 1:
            return self._grad_step[stacked](params, buffers, x, y, mask)
        # One row (a long client's last steps, a chunk of one) runs unbatched: vmap's batching costs a one-client
        # call 1.39 instead of 0.92 ms (small CNN, batch 3, CPU, measured); the maths is the same.
        one = {k: v[0] for k, v in params.items()} if stacked else params
        with self._kernels(x[0]):
            grads, losses = self._grad_one(one, buffers, x[0], y[0], mask[0])
        return {k: g.unsqueeze(0) for k, g in grads.items()}, losses.unsqueeze(0)

    @override
    def fit(self, global_params: Params, client: ClientData) -> tuple[Params, ClientResult]:
        """Train one client (a cohort of one); see `fit_many`."""
        return next(self.fit_many(global_params, [client]))

    @override
    def fit_many(self, global_params: Params, clients: Iterable[ClientData]) -> Iterator[tuple[Params, ClientResult]]:
        """Train ``clients`` from ``global_params`` in chunks of ``cohort_size``; yield them in the order given.

        The first item of a chunk costs the whole chunk's training; the others come at no cost.
        Yielded params are `ChunkRow`s: views of the chunk's stacked params, which live as long as a row does.
        """
        clients = list(clients)
        for start in range(0, len(clients), self.cohort_size):
            yield from self._fit_chunk(global_params, clients[start : start + self.cohort_size])

    def _fit_chunk(self, global_params: Params, clients: Sequence[ClientData]) -> Iterator[tuple[Params, ClientResult]]:
        s, n = self.settings, len(clients)
        plan = _Plan.of(clients, s, self.split_cost)
        model_tensors = dict(zip(self.keys, self._tensors, strict=True))
        start = {k: global_params[k].to(model_tensors[k]) for k in self.keys}
        buffers = {k: start[k] for k in self._buffer_keys}
        shared = {k: start[k] for k in self._param_keys}  # the first step's params: every client's start
        # The chunk's params, one row a client in plan order; the first step writes each trained row. When that
        # step is one block of every client, its gradients become the params (a buffer of their own would be
        # one more pass over fresh memory: 5.1 instead of 2.8 ms for 50 W-big clients, measured).
        trained = sum(b.stop - b.start for b in plan.steps[0]) if plan.steps else 0
        into_grads = bool(plan.steps) and len(plan.steps[0]) == 1 and trained == n
        stacked = {k: torch.empty(n, *v.shape, dtype=v.dtype, device=v.device) for k, v in shared.items()
                   } if trained and not into_grads else {}
        for k, v in stacked.items():
            v[trained:] = start[k]  # clients without a sample keep the start
        optimizer = FunctionalOptimizer(s.optimizer_settings)
        self._train_mode()
        x_all, y_all = clients[0].x, clients[0].y
        loss_sum = torch.zeros(n, device=self.fabric.device)
        sq_sum = torch.zeros(n, device=self.fabric.device)
        stats = GradStats({k: start[k] for k in self._param_keys}, n) if self.grad_stats else None
        for t, blocks in enumerate(plan.steps):
            for b in blocks:
                params = shared if t == 0 else {k: v[b.start : b.stop] for k, v in stacked.items()}
                x = x_all.index_select(0, b.index.reshape(-1)).view(*b.index.shape, *x_all.shape[1:])
                y = y_all.index_select(0, b.index.reshape(-1)).view(b.index.shape)
                grads, losses = self._grads(t > 0, params, buffers, x, y, b.mask)
                if s.mu > 0 and t > 0:  # at the first step every client is at the global params: a zero term
                    # FedProx (Li et al., MLSys 2020): the gradient of mu/2 ||w - w_global||^2 is mu (w - w_global).
                    grads = {k: g.add_(params[k] - start[k], alpha=s.mu) for k, g in grads.items()}
                if stats is not None:  # the gradient the step follows, before clipping: the block's rows only
                    stats.add(grads, b.start, b.stop)
                if t == 0 and into_grads:
                    stacked = dict(grads)
                masked = losses.float() * b.mask
                loss_sum[b.start : b.stop] += masked.sum(1)
                sq_sum[b.start : b.stop] += masked.square().sum(1)
                _step(optimizer, params, grads, stacked, Rows(b.start, b.stop, n, t), s.clip_grad_norm)
        # Entries no step wrote (buffers; every param when no client had a sample): the start, for every client.
        chunk = {k: stacked[k] if k in stacked else start[k].expand(n, *start[k].shape)
                 for k in self.keys if start[k].is_floating_point()}
        # The one host sync per chunk: losses, and each client's param norm for the fault guard.
        norms = torch.stack([l2_norm(t.reshape(n, -1), dim=1) for t in chunk.values()]).square().sum(0).sqrt()
        totals, squares, norms_ = torch.stack([loss_sum, sq_sum, norms.to(loss_sum.device)]).tolist()
        by_row = {k: t.unbind(0) for k, t in chunk.items()}  # one call per entry, not one per entry and client
        for client, row in zip(clients, plan.rows, strict=True):  # in the order given, whatever the plan's
            entries = {k: by_row[k][row] if k in by_row else start[k] for k in self.keys}
            yield ChunkRow.of(entries, chunk, row), ClientResult(
                client_id=client.client_id,
                num_samples=client.num_samples,
                num_steps=plan.num_steps[row],
                samples_processed=plan.samples[row],
                loss=totals[row] / max(plan.samples[row], 1),
                loss_sq_sum=squares[row],
                param_norm=norms_[row],
                **(stats.result(row, plan.num_steps[row]) if stats is not None else {}),
            )


def _step(optimizer: FunctionalOptimizer, params: Params, grads: Params, stacked: Params, rows: Rows,
          clip_grad_norm: float | None) -> None:
    """One step of the chunk's clients ``rows``, written into their rows of ``stacked``.

    ``params`` are the shared start (one copy, broadcast) at the first step, and those rows of ``stacked``
    (views) later: then the update is in place, which reads and writes as much memory as writing the result
    over the gradients did, and less than writing a separate buffer (on a CPU, 5.1 vs 2.8 ms for 50 W-big
    clients, measured).
    """
    if clip_grad_norm is not None:
        grads = _clip_per_client(grads, clip_grad_norm)
    for k, p in params.items():
        d, lr = optimizer.direction(k, grads[k], p, rows)
        out = stacked[k][rows.start : rows.stop]
        if rows.step == 0:
            torch.add(p, d, alpha=-lr, out=out)
        else:
            out.add_(d, alpha=-lr)


def _clip_per_client(grads: Params, max_norm: float) -> Params:
    """``torch.nn.utils.clip_grad_norm_`` applied to each client's gradients separately."""
    squares = [g.float().square().flatten(1).sum(1) for g in grads.values()]
    norm = torch.stack(squares).sum(0).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return {k: g * scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype) for k, g in grads.items()}

"""CohortTrainer: the clients of a round trained together with ``torch.func`` over stacked params.

Each chunk of ``cohort_size`` clients becomes one model with a leading client dimension on every
parameter. One step runs ``vmap(grad(functional_call(...)))`` over that dimension on a padded batch of
shape ``(clients, batch, ...)``; a per-sample mask keeps the padding out of losses and gradients, and a
per-client ``active`` flag gates the optimizer update, so momentum, weight decay and Adam do not move a
client that has finished its steps. Every client sees exactly the batches the sequential trainer gives
it (`ClientData.batch_indices`), so both backends agree to float rounding on dropout-free models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils.rnn import pad_sequence
from typing_extensions import override

from csfl_fabric.data.store import ClientData
from csfl_fabric.errors import ConfigError
from csfl_fabric.state import ClientResult, Params
from csfl_fabric.training.flat import ChunkRow, l2_norm
from csfl_fabric.training.optim import FunctionalOptimizer
from csfl_fabric.training.sequential import ClientTrainer
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


@dataclass(frozen=True)
class _Plan:
    """The padded batches of a chunk of clients: ``index``/``mask`` are ``(steps, clients, batch)``."""

    index: Tensor
    mask: Tensor
    active: Tensor
    all_active: list[bool]
    num_steps: list[int]
    samples: list[int]

    @classmethod
    def of(cls, clients: Sequence[ClientData], s: TrainSettings) -> _Plan:
        per_client = [list(c.batch_indices(s.batch_size, epochs=s.local_epochs, steps=s.local_steps)) for c in clients]
        num_steps = [len(b) for b in per_client]
        steps, n = max(num_steps, default=0), len(clients)
        device = clients[0].indices.device
        # Built as Python lists and turned into tensors once: per-client tensors cost more than the chunk's step.
        sizes = [[len(b) for b in batches] + [0] * (steps - len(batches)) for batches in per_client]
        rows = [t * n + i for i, batches in enumerate(per_client) for t in range(len(batches))]
        lengths = torch.tensor(sizes, dtype=torch.long).T.reshape(steps, n)
        width = max((max(sz) for sz in sizes), default=0) if steps else 0
        index = torch.zeros(steps * n, width, dtype=torch.long, device=device)
        if rows:
            # One padded gather for the whole chunk instead of one small copy per batch (kernel launches on CUDA).
            index[torch.tensor(rows, device=device)] = pad_sequence([b for bs in per_client for b in bs], True)
        all_active = [all(sz[t] for sz in sizes) for t in range(steps)]
        lengths = lengths.to(device)
        mask = torch.arange(width, device=device) < lengths.unsqueeze(-1)
        return cls(index.view(steps, n, width), mask, lengths > 0, all_active, num_steps, [sum(sz) for sz in sizes])


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
    """

    #: vmap's batched convolutions gain nothing from channels-last weights (measured): the cohort keeps row-major ones.
    CHANNELS_LAST = False

    def __init__(
        self, fabric: Fabric, model: nn.Module, settings: TrainSettings, num_classes: int, cohort_size: int = 64
    ) -> None:
        if cohort_size < 1:
            raise ConfigError(f"Expected `train.cohort_size` to be >= 1 but got {cohort_size}.")
        check_cohort_model(model)
        super().__init__(fabric, model, settings, num_classes)
        self.cohort_size = cohort_size
        self._buffer_keys = [k for k in self.keys if k not in set(self._param_keys)]
        # in_dims: params batched over clients (shared in the first step, when all clients still hold the
        # global params: no stacked copy to make, and the forward reads one set of weights), buffers shared,
        # inputs/labels/mask batched.
        self._grad_step: dict[bool, Callable[..., tuple[Params, Tensor]]] = {
            stacked: vmap(grad(self._loss, has_aux=True), in_dims=(0 if stacked else None, None, 0, 0, 0),
                          randomness="different")
            for stacked in (False, True)
        }

    def _loss(self, params: Params, buffers: Params, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # One client's masked mean loss: padded samples add exact zeros to the loss and the gradient.
        with self._precision.forward_context():
            logits = functional_call(self._forward, (params, buffers), (self._precision.convert_input(x),))
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        weights = mask.to(losses.dtype)
        return (losses * weights).sum() / weights.sum().clamp(min=1.0), losses.detach()

    @override
    def fit(self, global_params: Params, client: ClientData) -> tuple[Params, ClientResult]:
        """Train one client (a cohort of one); see `fit_many`."""
        return next(self.fit_many(global_params, [client]))

    @override
    def fit_many(self, global_params: Params, clients: Iterable[ClientData]) -> Iterator[tuple[Params, ClientResult]]:
        """Train ``clients`` from ``global_params`` in chunks of ``cohort_size``; yield them in order.

        The first item of a chunk costs the whole chunk's training; the others come at no cost.
        Yielded params are `ChunkRow`s: views of the chunk's stacked params, which live as long as a row does.
        """
        clients = list(clients)
        for start in range(0, len(clients), self.cohort_size):
            yield from self._fit_chunk(global_params, clients[start : start + self.cohort_size])

    def _fit_chunk(self, global_params: Params, clients: Sequence[ClientData]) -> Iterator[tuple[Params, ClientResult]]:
        s, n = self.settings, len(clients)
        plan = _Plan.of(clients, s)
        model_tensors = dict(zip(self.keys, self._tensors, strict=True))
        start = {k: global_params[k].to(model_tensors[k]) for k in self.keys}
        buffers = {k: start[k] for k in self._buffer_keys}
        params = {k: start[k] for k in self._param_keys}  # stacked, (clients, ...), after the first step
        optimizer = FunctionalOptimizer(s.optimizer_settings)
        self._train_mode()
        x_all, y_all = clients[0].x, clients[0].y
        loss_sum = torch.zeros(n, device=self.fabric.device)
        sq_sum = torch.zeros(n, device=self.fabric.device)
        for t in range(len(plan.index)):
            index = plan.index[t].reshape(-1)
            x = x_all.index_select(0, index).view(n, -1, *x_all.shape[1:])
            y = y_all.index_select(0, index).view(n, -1)
            grads, losses = self._grad_step[t > 0](params, buffers, x, y, plan.mask[t])
            if s.mu > 0:
                # FedProx (Li et al., MLSys 2020): the gradient of mu/2 ||w - w_global||^2 is mu (w - w_global).
                grads = {k: g.add_(params[k] - start[k], alpha=s.mu) for k, g in grads.items()}
            masked = losses.float() * plan.mask[t]
            loss_sum += masked.sum(1)
            sq_sum += masked.square().sum(1)
            params = _step(optimizer, params, grads, None if plan.all_active[t] else plan.active[t], s.clip_grad_norm)
        # Entries no step wrote (buffers; every param when no client had a sample): the start, for every client.
        trained = len(plan.index) > 0
        chunk = {k: params[k] if trained and k in params else start[k].expand(n, *start[k].shape)
                 for k in self.keys if start[k].is_floating_point()}
        # The one host sync per chunk: losses, and each client's param norm for the fault guard.
        norms = torch.stack([l2_norm(t.reshape(n, -1), dim=1) for t in chunk.values()]).square().sum(0).sqrt()
        totals, squares, norms_ = torch.stack([loss_sum, sq_sum, norms.to(loss_sum.device)]).tolist()
        rows = {k: t.unbind(0) for k, t in chunk.items()}  # one call per entry, not one per entry and client
        for i, client in enumerate(clients):
            entries = {k: rows[k][i] if k in rows else start[k] for k in self.keys}
            yield ChunkRow.of(entries, chunk, i), ClientResult(
                client_id=client.client_id,
                num_samples=client.num_samples,
                num_steps=plan.num_steps[i],
                samples_processed=plan.samples[i],
                loss=totals[i] / max(plan.samples[i], 1),
                loss_sq_sum=squares[i],
                param_norm=norms_[i],
            )


def _step(optimizer: FunctionalOptimizer, params: Params, grads: Params, active: Tensor | None,
          clip_grad_norm: float | None) -> Params:
    """Params after one step of every client of a chunk (only the ``active`` ones move), written into ``grads``.

    ``active`` None: every client steps. ``params`` are the shared start (one copy, broadcast) at the first
    step and the stacked params of the previous step later. The new params overwrite the gradients, which are
    ours and no longer needed: on a CPU, writing a separate buffer costs twice as much (5.1 vs 2.8 ms for 50
    W-big clients, measured).
    """
    if clip_grad_norm is not None:
        grads = _clip_per_client(grads, clip_grad_norm)
    new = {}
    for k, p in params.items():
        g = grads[k]
        d, lr = optimizer.direction(k, g, p, active)
        if active is None:
            new[k] = torch.add(p, d, alpha=-lr, out=g)
        else:
            new[k] = torch.where(active.view(-1, *[1] * (d.dim() - 1)), torch.add(p, d, alpha=-lr), p, out=g)
    return new


def _clip_per_client(grads: Params, max_norm: float) -> Params:
    """``torch.nn.utils.clip_grad_norm_`` applied to each client's gradients separately."""
    squares = [g.float().square().flatten(1).sum(1) for g in grads.values()]
    norm = torch.stack(squares).sum(0).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return {k: g * scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype) for k, g in grads.items()}

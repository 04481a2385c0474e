"""ClientTrainer: local training and evaluation on Fabric, with one model reused for every client."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfl_fabric.data.store import ClientData
from csfl_fabric.engine.fabric import Fabric, Precision
from csfl_fabric.models import forward_flops_per_sample
from csfl_fabric.state import ClientResult, Params
from csfl_fabric.training.evaluation import ConfusionMatrix
from csfl_fabric.training.flat import FlatParams, flat_of, flatten_module, l2_norm
from csfl_fabric.training.optim import FunctionalOptimizer
from csfl_fabric.training.settings import TrainSettings


def make_optimizer(params: Sequence[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    """torch.optim's version of ``s.optimizer``, for Fabric's setup and the gradient-scaler path."""
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


class ClientTrainer:
    """Trains clients one at a time on one model that Fabric set up once.

    Weights are copied into the model in place, never deep-copied per client, and the optimizer's state is
    cleared per client so that every client starts fresh. The model's floating-point weights live in one
    buffer (`csfl_fabric.training.flat`), so loading them, checking them and folding them into the aggregate are one
    tensor operation each. Losses are accumulated on the device and read once per client: no per-batch
    host sync.

    Args:
        fabric: the run's Fabric (device, precision).
        model: a freshly built model; it is set up with Fabric here and reused for every client.
        settings: local-training hyperparameters.
        num_classes: for the evaluation metrics.
    """

    #: Whether ``settings.channels_last`` applies: convolution weights in channels-last order make every
    #: activation after them channels-last, which CPU kernels run faster (max-pooling ~16x on 8x8 maps).
    CHANNELS_LAST = True
    #: Collect per-step gradient statistics (`ClientResult.grad_mean`, ``grad_sq_mean``); build.py turns it on
    #: for selectors with ``needs_grad_stats`` (not a config key: the selector decides).
    grad_stats = False

    def __init__(self, fabric: Fabric, model: nn.Module, settings: TrainSettings, num_classes: int) -> None:
        self.fabric = fabric
        self.settings = settings
        if settings.channels_last and self.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)  # only 4-D (convolution) weights change
        self.model, self.optimizer = fabric.setup(model, make_optimizer(list(model.parameters()), settings))
        # The hot loop calls the set-up module inside the precision's context itself: Fabric's forward wrapper
        # adds per-call bookkeeping (backward hooks, output conversion) that cost ~10% of a small-model round.
        self._precision = fabric.strategy.precision
        self._forward = self.model._forward_module
        # After setup, which may move or cast the weights; a model that cannot be flattened keeps its tensors.
        flat = flatten_module(self.model.module)
        # Live references to the module's tensors, in state-dict order: copying into these updates the model.
        state = self.model.module.state_dict(keep_vars=True)
        self.keys = list(state)
        self._tensors = list(state.values())
        self._params = list(self.model.module.parameters())
        self._param_keys = [k for k, t in state.items() if isinstance(t, nn.Parameter)]
        # What `fit` hands out: detached views of the model's tensors (a `FlatParams` for a flattened model).
        self._views: Params = flat if flat is not None else {k: t.detach() for k, t in state.items()}
        self._layout = flat.layout if flat is not None else None
        self._others = [(state[k], k) for k in self.keys if flat is not None and k not in flat.layout.names]
        # Without a gradient scaler the step is the shared `FunctionalOptimizer` (also the cohort's), without
        # torch.optim's per-call wrappers (profiling, grad mode, grouping): ~70 us a step on a CPU, ~6% of a
        # client. A scaler must unscale inside torch.optim's step, so that path keeps torch.optim.
        self._functional = getattr(self._precision, "scaler", None) is None
        self._opt = FunctionalOptimizer(settings.optimizer_settings)
        # Every rank evaluates the whole test set itself: its counts are never summed over the ranks.
        self._metrics = ConfusionMatrix(num_classes, fabric.device)
        # Batches narrower than this run ATen's native convolutions (`_kernels`); None: found at the first batch.
        native = (fabric.device.type == "cpu" and settings.native_conv_flops > 0 and type(self._precision) is Precision
                  and any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()))
        self._native_below: int | None = None if native else 0
        self._flops: int | None = None  # `forward_flops`, counted once

    def release(self) -> None:
        """Free what is rebuilt on demand: gradients, optimizer state, metric states (called between clients)."""
        self._zero_grad()
        self._clear_optimizer()  # `fit` clears it per client anyway
        self._metrics.reset()

    def global_params(self) -> Params:
        """A detached copy of the model's current weights and buffers (a `FlatParams` for a flattened model)."""
        if isinstance(self._views, FlatParams):
            return self._views.clone()
        return {k: t.clone() for k, t in self._views.items()}

    def _train_mode(self) -> None:
        # train() walks every submodule (~70 us for the small CNN, a few % of a one-step client): only on a change.
        # The wrapped module's train()/eval() goes through Fabric's __setattr__ (a dir() per call): use the original.
        if not self.model.module.training:
            self.model.module.train()

    def load(self, params: Params) -> None:
        """Copy ``params`` into the model in place (one copy when they are laid out as the model's buffer)."""
        flat = flat_of(params, self._layout)
        if flat is None:
            with torch.no_grad():  # in place into parameters
                torch._foreach_copy_(self._tensors, [params[k] for k in self.keys])
            return
        # The buffer is no parameter itself (they view it), so autograd has nothing to track here.
        self._views.flat.copy_(flat)  # type: ignore[attr-defined]
        if self._others:
            torch._foreach_copy_([t for t, _ in self._others], [params[k] for _, k in self._others])

    def fit(self, global_params: Params, client: ClientData) -> tuple[Params, ClientResult]:
        """Train one client from ``global_params``.

        Returns:
            The client's new params as detached views of the model's tensors (valid until the next
            ``fit``: fold them into the aggregate at once) and its `ClientResult`.
        """
        s = self.settings
        self.load(global_params)
        self._clear_optimizer()
        self._train_mode()
        anchor = [global_params[k] for k in self._param_keys] if s.mu > 0 else None
        per_sample: list[Tensor] = []  # concatenated once per client: no per-batch reductions
        stats = GradStats({str(i): p for i, p in enumerate(self._params)}) if self.grad_stats else None
        seen = steps = 0
        for x, y in client.batches(s.batch_size, epochs=s.local_epochs, steps=s.local_steps):
            with self._kernels(x):  # the backward picks its kernels when it runs: inside too
                with self._precision.forward_context():
                    logits = self._forward(self._precision.convert_input(x))
                losses = F.cross_entropy(logits.float(), y, reduction="none")
                self._zero_grad()
                # The strategy's backward (the precision's loss scaling included) without Fabric's per-call checks.
                self.fabric.strategy.backward(losses.mean(), None)
            if anchor is not None:
                # FedProx (Li et al., MLSys 2020): the gradient of mu/2 ||w - w_global||^2 is mu (w - w_global).
                grads = [p.grad for p in self._params]
                torch._foreach_add_(grads, torch._foreach_sub(self._params, anchor), alpha=s.mu)
            if stats is not None:  # the gradient the step follows, before any clipping
                stats.add({str(i): (p.grad if p.grad is not None else torch.zeros_like(p)).unsqueeze(0)
                           for i, p in enumerate(self._params)})
            if s.clip_grad_norm is not None:
                self.fabric.clip_gradients(self.model, self.optimizer, max_norm=s.clip_grad_norm)
            self._step()
            per_sample.append(losses.detach())
            seen += len(y)
            steps += 1
        flat = self._views.flat if isinstance(self._views, FlatParams) else None
        total, sq_total, norm = _client_stats(per_sample, flat)
        result = ClientResult(
            client_id=client.client_id,
            num_samples=client.num_samples,
            num_steps=steps,
            samples_processed=seen,
            loss=total / max(seen, 1),
            loss_sq_sum=sq_total,
            param_norm=norm,
            **(stats.result(0, steps) if stats is not None else {}),
        )
        return self._views.copy(), result

    def forward_flops(self, x: Tensor) -> int:
        """FLOPs of the model's forward pass on one sample like ``x[0]``, as the trainer runs it; counted once."""
        if self._flops is None:
            with self._precision.forward_context():  # inputs in the precision's dtype, under its context
                self._flops = forward_flops_per_sample(self.model.module, self._precision.convert_input(x[:1]))
        return self._flops

    def _kernels(self, x: Tensor) -> contextlib.AbstractContextManager[None]:
        """ATen's native convolutions for a batch ``x`` below ``settings.native_conv_flops`` FLOPs, else oneDNN's.

        oneDNN's cost per call dominates tiny batches. Measured on the 2-core VM (forward + backward, 1 thread,
        2026-12-01): the speed issue's CNN (16/32 channels) on 8x8 digits, 2 images 0.28 ms native against
        0.47 ms oneDNN, 8 images 0.50 vs 0.57, 12 images (8.1 MFLOP) even, 16 images 1.14 vs 0.68; the
        quickstart's CNN (32/64 channels), 2 images 0.51 vs 0.69, 4 (10.6 MFLOP) even; on 28x28 and 32x32
        inputs (the CNN, `femnist_cnn`, ResNet-18) oneDNN was faster from 2 images on. The choice depends on
        the batch's width only, so a config and seed still give the same numbers.
        """
        if self._native_below is None:
            flops = self.forward_flops(x)
            # No FLOPs counted (a convolution torch's counter does not know): keep oneDNN rather than guess.
            self._native_below = math.ceil(self.settings.native_conv_flops / flops) if flops > 0 else 0
        return _native_convolutions() if len(x) < self._native_below else contextlib.nullcontext()

    def _zero_grad(self) -> None:
        for p in self._params:  # what zero_grad(set_to_none=True) does, without its per-call wrappers
            p.grad = None

    def _clear_optimizer(self) -> None:
        self.optimizer.state.clear()
        self._opt.reset()

    @torch.no_grad()
    def _step(self) -> None:
        if not self._functional:
            self.optimizer.step()
            return
        # The parameters that have a gradient; the gradients are ours (set to None before every backward).
        if self._opt.plain:  # the default: one fused update, no per-tensor calls (W-big: one step per client)
            params = [p for p in self._params if p.grad is not None]
            torch._foreach_add_(params, [p.grad for p in params], alpha=-self.settings.lr)  # type: ignore[misc]
            return
        live = [(i, p) for i, p in enumerate(self._params) if p.grad is not None]
        if not live:
            return
        steps = [self._opt.direction(i, p.grad, p) for i, p in live]  # type: ignore[arg-type]
        lrs = {lr for _, lr in steps}
        if len(lrs) == 1:  # the usual case (Adam's per-tensor bias correction differs only if a tensor skipped steps)
            torch._foreach_add_([p for _, p in live], [d for d, _ in steps], alpha=-lrs.pop())
            return
        for (_, p), (d, lr) in zip(live, steps, strict=True):
            p.add_(d, alpha=-lr)

    def fit_many(self, global_params: Params, clients: Iterable[ClientData]) -> Iterator[tuple[Params, ClientResult]]:
        """`fit` each of ``clients`` from ``global_params`` in order, lazily: a client trains when its item is drawn.

        Each yielded params is valid until the next item is drawn (fold it into the aggregate at once). A client
        whose training raises consumes its item; the next one trains normally (the fault guard relies on that).
        The cohort backend implements the same method by training chunks of clients together.
        """
        return _EachClient(self.fit, global_params, iter(clients))

    @torch.inference_mode()
    def evaluate(self, params: Params, x: Tensor, y: Tensor) -> dict[str, float]:
        """Accuracy, mean loss, macro-F1, macro precision and macro recall of ``params`` on ``(x, y)``."""
        self.load(params)
        self.model.module.eval()
        self._metrics.reset()
        loss_sum = torch.zeros((), device=self.fabric.device)
        for start in range(0, len(y), self.settings.eval_batch_size):
            xb, yb = x[start : start + self.settings.eval_batch_size], y[start : start + self.settings.eval_batch_size]
            logits = self.model(xb).float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            self._metrics.update(logits, yb)
        computed = self._metrics.compute()
        values = torch.stack([loss_sum / max(len(y), 1), *computed.values()]).tolist()
        return {"eval/loss": values[0], **{f"eval/{k}": v for k, v in zip(computed, values[1:], strict=True)}}

    @torch.inference_mode()
    def losses(self, params: Params, clients: Sequence[ClientData], batch_size: int | None = None) -> np.ndarray:
        """Mean loss of ``params`` on each client's data (what power-of-choice probes).

        Args:
            params: the model to evaluate (the current global model).
            clients: the clients to probe.
            batch_size: None for the full local data; else the client's first seeded mini-batch of this
                many samples (cpow-d's estimate), the same batch its training would start with.
        """
        self.load(params)
        self.model.module.eval()
        out = []
        for client in clients:
            # A client with no samples yields no batch: then the (empty) full data, whose loss is 0 as below.
            batch = None if batch_size is None else next(client.batches(batch_size), None)
            x, y = batch if batch is not None else client.arrays()
            loss = torch.zeros((), device=self.fabric.device)
            for start in range(0, len(y), self.settings.eval_batch_size):
                stop = start + self.settings.eval_batch_size
                loss += F.cross_entropy(self.model(x[start:stop]).float(), y[start:stop], reduction="sum")
            out.append(loss / max(len(y), 1))
        return torch.stack(out).cpu().numpy().astype(float) if out else np.zeros(0)


    def gradients(self, params: Params, clients: Sequence[ClientData]) -> np.ndarray:
        """Full-batch gradient of each client's mean training loss at ``params`` (DivFL's signal), one row each.

        The gradient of ``mean_i CE(f(x_i), y_i)`` over all the client's samples with respect to every trainable
        parameter (in ``parameters()`` order, flattened, float32); in eval mode, so dropout and batch statistics
        do not make it random. The model's weights are left as loaded (no step is taken).
        """
        self.load(params)
        self.model.module.eval()
        rows = []
        for client in clients:
            x, y = client.arrays()
            total = [torch.zeros_like(p) for p in self._params]
            for start in range(0, len(y), self.settings.eval_batch_size):
                stop = start + self.settings.eval_batch_size
                with self._precision.forward_context():
                    logits = self._forward(self._precision.convert_input(x[start:stop]))
                loss = F.cross_entropy(logits.float(), y[start:stop], reduction="sum") / len(y)
                grads = torch.autograd.grad(loss, self._params, allow_unused=True)
                torch._foreach_add_(total, [g if g is not None else torch.zeros_like(p)
                                            for g, p in zip(grads, self._params, strict=True)])
            rows.append(torch.cat([g.reshape(-1).float() for g in total]).cpu())
        dim = sum(p.numel() for p in self._params)
        return torch.stack(rows).numpy() if rows else np.zeros((0, dim), dtype=np.float32)


class GradStats:
    """Running sums of mini-batch gradients and of their squared norms, per client of ``n`` stacked ones.

    The sequential backend uses one row (``n=1``), the cohort backend one row per client of a chunk; the sums
    stay on the device (no host sync until `result`).

    >>> stats = GradStats({"w": torch.zeros(2)})
    >>> stats.add({"w": torch.tensor([[1.0, 0.0]])}); stats.add({"w": torch.tensor([[3.0, 0.0]])})
    >>> r = stats.result(0, steps=2); r["grad_mean"].tolist(), r["grad_sq_mean"]
    ([2.0, 0.0], 5.0)
    """

    def __init__(self, params: Params, n: int = 1) -> None:
        self.sums = {k: torch.zeros((n, *p.shape), dtype=torch.float32, device=p.device) for k, p in params.items()}
        first = next(iter(params.values()), None)
        self.sq = torch.zeros(n, dtype=torch.float32, device=first.device if first is not None else "cpu")

    def add(self, grads: Params, start: int = 0, stop: int | None = None) -> None:
        """Fold in one step's stacked gradients (leading dimension: the rows ``start:stop``)."""
        stop = len(self.sq) if stop is None else stop
        for k, g in grads.items():
            self.sums[k][start:stop] += g.float()
            self.sq[start:stop] += g.float().reshape(stop - start, -1).square().sum(1)

    def result(self, i: int, steps: int) -> dict[str, Any]:
        """Row ``i``'s ``grad_mean`` (flat, float32, CPU) and ``grad_sq_mean`` over ``steps`` steps."""
        n = max(steps, 1)
        mean = torch.cat([t[i].reshape(-1) for t in self.sums.values()]).div_(n).cpu() if self.sums else torch.zeros(0)
        return {"grad_mean": mean, "grad_sq_mean": float(self.sq[i]) / n}


def _client_stats(losses: list[Tensor], flat: Tensor | None) -> tuple[float, float, float | None]:
    """Sum and sum of squares of the per-sample ``losses``, and the norm of ``flat`` if given, in one host sync."""
    norm = [] if flat is None else [l2_norm(flat)]
    if not losses:  # a client without samples
        return 0.0, 0.0, norm[0].item() if norm else None
    per_sample = torch.cat(losses) if len(losses) > 1 else losses[0]
    values = torch.stack([per_sample.sum(), per_sample.dot(per_sample), *norm]).tolist()
    return values[0], values[1], values[2] if norm else None


@contextlib.contextmanager
def _native_convolutions() -> Iterator[None]:
    """Switch oneDNN off inside the block; torch's switch is global, so it is restored however the block ends."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


class _EachClient:
    """An iterator that trains the next client when drawn and, unlike a generator, survives a client's exception."""

    def __init__(self, fit: Callable[[Params, ClientData], tuple[Params, ClientResult]], global_params: Params,
                 clients: Iterator[ClientData]) -> None:
        self._fit, self._global, self._clients = fit, global_params, clients

    def __iter__(self) -> _EachClient:
        return self

    def __next__(self) -> tuple[Params, ClientResult]:
        return self._fit(self._global, next(self._clients))

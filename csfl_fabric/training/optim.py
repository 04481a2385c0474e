"""The client optimizers, written once for both backends: torch.optim's SGD and Adam as functions of a gradient.

`FunctionalOptimizer.direction` turns one tensor's gradient into its update direction and learning rate, for
one client (the sequential backend, one tensor per parameter) or for a block of stacked clients (the cohort
backend: a leading client dimension, `Rows` naming which rows of the chunk's state the gradient belongs to).
The caller applies ``param - lr * direction`` in whatever layout it holds. torch.optim itself is used only where
a gradient scaler must unscale inside ``optimizer.step`` (16-bit mixed precision on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from csfl_fabric.training.settings import OptimizerSettings

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class Rows:
    """Rows ``start:stop`` of a chunk of ``total`` stacked clients, all of which are at local step ``step``."""

    start: int
    stop: int
    total: int
    step: int


class FunctionalOptimizer:
    """torch.optim's SGD (momentum, dampening 0, no Nesterov; weight decay) and Adam (L2 weight decay).

    State is kept per tensor key: the momentum buffer or Adam's moments, and the number of steps taken. For
    stacked clients (`Rows`) the state holds every row of the chunk and a call updates only its block of rows;
    the caller says which local step those clients are at (they all are at the same one), so Adam's bias
    corrections are scalars, computed in double as torch does. The state is updated in place: the same
    operations, in the same order, as torch.optim's single-tensor SGD and Adam.

    >>> import torch
    >>> opt = FunctionalOptimizer(OptimizerSettings(lr=0.1, momentum=0.5))
    >>> [opt.direction("w", torch.tensor([1.0]))[0].item() for _ in range(3)]   # buf = g, 1.5, 1.75
    [1.0, 1.5, 1.75]
    """

    def __init__(self, settings: OptimizerSettings) -> None:
        self.s = settings
        self.exp_avg: dict[object, Tensor] = {}  # momentum buffer (SGD) or first moment (Adam)
        self.exp_avg_sq: dict[object, Tensor] = {}
        self.steps: dict[object, int] = {}

    @property
    def plain(self) -> bool:
        """True for SGD without momentum or weight decay: the direction is the gradient itself, with no state."""
        return self.s.optimizer == "sgd" and not self.s.momentum and not self.s.weight_decay

    def reset(self) -> None:
        """Forget all state (a new client starts fresh)."""
        self.exp_avg.clear()
        self.exp_avg_sq.clear()
        self.steps.clear()

    def direction(self, key: object, g: Tensor, param: Tensor | None = None, rows: Rows | None = None
                  ) -> tuple[Tensor, float]:
        """The update direction of ``key`` from its gradient ``g`` and the learning rate to scale it with.

        ``g`` is the caller's to change: weight decay (``g += weight_decay * param``) is added in place.
        ``rows``: ``g`` holds rows ``rows.start:rows.stop`` of stacked clients (None: one client).
        """
        s = self.s
        if s.weight_decay and param is not None:
            g = g.add_(param, alpha=s.weight_decay)
        if rows is None:
            t = self.steps.get(key, 0)
            self.steps[key] = t + 1
        else:
            t = rows.step
        if s.optimizer == "adam":
            return self._adam(key, g, rows, t)
        if not s.momentum:
            return g, s.lr
        # torch starts the buffer at the first gradient (buffer = g); later buffer = momentum * buffer + g.
        buf = self._slot(self.exp_avg, key, g, rows)
        return (buf.copy_(g) if t == 0 else buf.mul_(s.momentum).add_(g)), s.lr

    def _adam(self, key: object, g: Tensor, rows: Rows | None, t: int) -> tuple[Tensor, float]:
        b1, b2 = ADAM_BETAS
        m = self._slot(self.exp_avg, key, g, rows).lerp_(g, 1 - b1)
        v = self._slot(self.exp_avg_sq, key, g, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / (1 - b2 ** (t + 1)) ** 0.5).add_(ADAM_EPS)
        return m / denom, self.s.lr / (1 - b1 ** (t + 1))

    @staticmethod
    def _slot(state: dict[object, Tensor], key: object, g: Tensor, rows: Rows | None) -> Tensor:
        """``state[key]`` (zeros shaped like ``g``, or like all ``rows.total`` rows, on first use), or its rows."""
        buf = state.get(key)
        if buf is None:
            buf = state[key] = g.new_zeros(g.shape if rows is None else (rows.total, *g.shape[1:]))
        return buf if rows is None else buf[rows.start : rows.stop]

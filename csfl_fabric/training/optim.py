"""The client optimizers, written once for both backends: torch.optim's SGD and Adam as functions of a gradient.

`FunctionalOptimizer.direction` turns one tensor's gradient into its update direction and learning rate, for
one client (the sequential backend, one tensor per parameter) or for stacked clients (the cohort backend,
a leading client dimension and an ``active`` mask that keeps finished clients' state as it is). The caller
applies ``param - lr * direction`` in whatever layout it holds. torch.optim itself is used only where a
gradient scaler must unscale inside ``optimizer.step`` (16-bit mixed precision on CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from csfl_fabric.training.settings import OptimizerSettings

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8


class FunctionalOptimizer:
    """torch.optim's SGD (momentum, dampening 0, no Nesterov; weight decay) and Adam (L2 weight decay).

    State is kept per tensor key: the momentum buffer or Adam's moments, and the number of steps taken.
    With an ``active`` mask (stacked clients) an inactive client's state is kept as it is; all active clients
    of a cohort chunk are at the same step, so Adam's bias corrections are scalars, computed in double as
    torch does.

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

    def direction(self, key: object, g: Tensor, param: Tensor | None = None, active: Tensor | None = None
                  ) -> tuple[Tensor, float]:
        """The update direction of ``key`` from its gradient ``g`` and the learning rate to scale it with.

        ``g`` is the caller's to change: weight decay (``g += weight_decay * param``) is added in place.
        """
        s = self.s
        if s.weight_decay and param is not None:
            g = g.add_(param, alpha=s.weight_decay)
        t = self.steps.get(key, 0)
        self.steps[key] = t + 1
        if s.optimizer == "adam":
            return self._adam(key, g, active, t)
        if not s.momentum:
            return g, s.lr
        # torch starts the buffer at the first gradient (buffer = g); later buffer = momentum * buffer + g.
        old = self.exp_avg.get(key)
        buf = g.clone() if old is None else _gated(active, old.mul(s.momentum).add_(g), old)
        self.exp_avg[key] = buf
        return buf, s.lr

    def _adam(self, key: object, g: Tensor, active: Tensor | None, t: int) -> tuple[Tensor, float]:
        b1, b2 = ADAM_BETAS
        if key not in self.exp_avg:
            self.exp_avg[key], self.exp_avg_sq[key] = torch.zeros_like(g), torch.zeros_like(g)
        m, v = self.exp_avg[key], self.exp_avg_sq[key]
        m = self.exp_avg[key] = _gated(active, torch.lerp(m, g, 1 - b1), m)
        v = self.exp_avg_sq[key] = _gated(active, (v * b2).addcmul_(g, g, value=1 - b2), v)
        denom = (v.sqrt() / (1 - b2 ** (t + 1)) ** 0.5).add_(ADAM_EPS)
        return m / denom, self.s.lr / (1 - b1 ** (t + 1))


def _gated(active: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """``new`` for active clients (rows of the leading dimension), ``old`` for the others."""
    return new if active is None else torch.where(active.view(-1, *[1] * (new.dim() - 1)), new, old)

"""The registered aggregators: FedAvg, FedAvgM and the adaptive server optimizers, with their update rules."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from typing_extensions import override

from csfl_fabric.aggregation.base import Aggregator, check_beta, check_positive
from csfl_fabric.registry import AGGREGATORS


def fedavg_step(x: list[Tensor], mean: list[Tensor], server_lr: float) -> list[Tensor]:
    """Return ``x + server_lr * (mean - x)``; ``server_lr=1`` returns ``mean`` itself (plain FedAvg, exact).

    >>> fedavg_step([torch.tensor([1.0])], [torch.tensor([3.0])], server_lr=0.5)
    [tensor([2.])]
    """
    if server_lr == 1.0:
        return list(mean)
    delta = torch._foreach_sub(mean, x)
    return list(torch._foreach_add(x, delta, alpha=server_lr))


def fedavgm_step(
    x: list[Tensor], delta: list[Tensor], v: list[Tensor], server_lr: float, momentum: float
) -> list[Tensor]:
    """Server momentum: ``v <- momentum * v + delta`` (in place), return ``x + server_lr * v``.

    >>> v = [torch.tensor([1.0])]
    >>> fedavgm_step([torch.tensor([0.0])], [torch.tensor([2.0])], v, server_lr=1.0, momentum=0.5), v
    ([tensor([2.5000])], [tensor([2.5000])])
    """
    torch._foreach_mul_(v, momentum)
    torch._foreach_add_(v, delta)
    return list(torch._foreach_add(x, v, alpha=server_lr))


def _adagrad_v(v: list[Tensor], delta: list[Tensor], beta2: float) -> None:
    torch._foreach_addcmul_(v, delta, delta)  # v + delta^2; beta2 unused


def _adam_v(v: list[Tensor], delta: list[Tensor], beta2: float) -> None:
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, delta, delta, value=1.0 - beta2)


def _yogi_v(v: list[Tensor], delta: list[Tensor], beta2: float) -> None:
    # Yogi moves v towards delta^2 by an additive step, so v cannot jump up on one large delta as in Adam.
    d2 = torch._foreach_mul(delta, delta)
    sign = torch._foreach_sign(torch._foreach_sub(v, d2))
    torch._foreach_addcmul_(v, d2, sign, value=-(1.0 - beta2))


_SECOND_MOMENT: dict[str, Callable[[list[Tensor], list[Tensor], float], None]] = {
    "adagrad": _adagrad_v,
    "adam": _adam_v,
    "yogi": _yogi_v,
}


def fedopt_step(
    x: list[Tensor],
    delta: list[Tensor],
    m: list[Tensor],
    v: list[Tensor],
    *,
    rule: str,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> list[Tensor]:
    """One server step of Reddi et al.'s Algorithm 2; updates ``m`` and ``v`` in place, returns the new ``x``.

    ``m <- beta1 m + (1 - beta1) delta``; ``v`` by ``rule`` (adagrad: ``v + delta^2``, adam:
    ``beta2 v + (1 - beta2) delta^2``, yogi: ``v - (1 - beta2) delta^2 sign(v - delta^2)``);
    ``x + server_lr * m / (sqrt(v) + tau)``. No bias correction, as in the paper.

    >>> m, v = [torch.tensor([0.0])], [torch.tensor([0.0])]
    >>> fedopt_step([torch.tensor([1.0])], [torch.tensor([0.5])], m, v, rule="adagrad",
    ...             server_lr=0.1, beta1=0.0, beta2=0.0, tau=0.5)
    [tensor([1.0500])]
    >>> m, v
    ([tensor([0.5000])], [tensor([0.2500])])
    """
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, delta, alpha=1.0 - beta1)
    _SECOND_MOMENT[rule](v, delta, beta2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, tau)
    return list(torch._foreach_addcdiv(x, m, denom, value=server_lr))


@AGGREGATORS.register("fedavg")
class FedAvg(Aggregator):
    """Federated Averaging: the weighted mean of the client params, optionally damped by ``server_lr``.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017, https://arxiv.org/abs/1602.05629. ``server_lr`` scales the pseudo-gradient
    ``mean - global`` (Reddi et al. 2021); 1.0 gives plain FedAvg, exactly the weighted mean.

    Args:
        server_lr: server learning rate, > 0.
    """

    def __init__(self, server_lr: float = 1.0) -> None:
        super().__init__()
        check_positive("server_lr", server_lr)
        self.server_lr = float(server_lr)

    @override
    def step(self, names: list[str], x: list[Tensor], mean: list[Tensor]) -> list[Tensor]:
        """Return ``x + server_lr * (mean - x)``."""
        return fedavg_step(x, mean, self.server_lr)


@AGGREGATORS.register("fedavgm")
class FedAvgM(Aggregator):
    """FedAvg with server momentum on the pseudo-gradient ``delta = mean - global``.

    Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification", 2019, https://arxiv.org/abs/1909.06335; also in Reddi et al., ICLR 2021,
    https://arxiv.org/abs/2003.00295. ``v <- momentum * v + delta``, ``x <- x + server_lr * v``, ``v`` starts at 0.

    Args:
        server_lr: server learning rate, > 0.
        momentum: in [0, 1).
    """

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        check_positive("server_lr", server_lr)
        check_beta("momentum", momentum)
        self.server_lr, self.momentum = float(server_lr), float(momentum)

    @override
    def step(self, names: list[str], x: list[Tensor], mean: list[Tensor]) -> list[Tensor]:
        """Momentum step on ``mean - x``."""
        torch._foreach_sub_(mean, x)  # mean becomes delta
        v = self._buffer("momentum", names, x, fill=0.0)
        return fedavgm_step(x, mean, v, self.server_lr, self.momentum)


class _FedOpt(Aggregator):
    """Adaptive server optimizer of Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.

    https://arxiv.org/abs/2003.00295. Runs `fedopt_step` with the subclass's ``rule`` on the
    pseudo-gradient ``delta = mean - global``. Initial state: ``m = 0`` and ``v = tau^2``, the smallest
    value the paper allows (``v_{-1} >= tau^2``). No bias correction (unlike Flower's FedAdam).

    Args:
        server_lr: server learning rate, > 0.
        beta1: first-moment decay, in [0, 1).
        beta2: second-moment decay, in [0, 1) (unused by FedAdagrad).
        tau: adaptivity, the denominator's offset, > 0.
    """

    rule = ""

    def __init__(self, server_lr: float, beta1: float, beta2: float, tau: float) -> None:
        super().__init__()
        check_positive("server_lr", server_lr)
        check_beta("beta1", beta1)
        check_beta("beta2", beta2)
        check_positive("tau", tau)
        self.server_lr, self.beta1, self.beta2, self.tau = float(server_lr), float(beta1), float(beta2), float(tau)

    @override
    def step(self, names: list[str], x: list[Tensor], mean: list[Tensor]) -> list[Tensor]:
        """Adaptive step on ``mean - x``."""
        torch._foreach_sub_(mean, x)  # mean becomes delta
        m = self._buffer("m", names, x, fill=0.0)
        v = self._buffer("v", names, x, fill=self.tau**2)
        return fedopt_step(
            x, mean, m, v, rule=self.rule, server_lr=self.server_lr, beta1=self.beta1, beta2=self.beta2, tau=self.tau
        )


@AGGREGATORS.register("fedadagrad")
class FedAdagrad(_FedOpt):
    """FedAdagrad (Reddi et al., ICLR 2021, https://arxiv.org/abs/2003.00295): ``v <- v + delta^2``."""

    rule = "adagrad"

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=0.0, tau=tau)


@AGGREGATORS.register("fedadam")
class FedAdam(_FedOpt):
    """FedAdam (Reddi et al., ICLR 2021, https://arxiv.org/abs/2003.00295): ``v <- b2 v + (1 - b2) delta^2``."""

    rule = "adam"

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)


@AGGREGATORS.register("fedyogi")
class FedYogi(_FedOpt):
    """FedYogi (Reddi et al., ICLR 2021, https://arxiv.org/abs/2003.00295): ``v <- v - (1-b2) d^2 sign(v - d^2)``."""

    rule = "yogi"

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)

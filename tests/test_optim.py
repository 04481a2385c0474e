"""The one optimizer implementation (`training.optim`) against torch.optim, for one client and stacked clients."""

from __future__ import annotations

import pytest
import torch

from csfl_fabric.training.optim import FunctionalOptimizer, Rows
from csfl_fabric.training.settings import OptimizerSettings

CASES = [OptimizerSettings("sgd", 0.1), OptimizerSettings("sgd", 0.1, momentum=0.9, weight_decay=0.01),
         OptimizerSettings("adam", 0.01), OptimizerSettings("adam", 0.01, weight_decay=0.1)]


def _torch_optimizer(s: OptimizerSettings, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


@pytest.mark.parametrize("settings", CASES, ids=lambda s: f"{s.optimizer}-m{s.momentum}-wd{s.weight_decay}")
def test_functional_steps_match_torch_optim(settings: OptimizerSettings) -> None:
    torch.manual_seed(0)
    start = [torch.randn(3, 2), torch.randn(4)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    reference = [torch.nn.Parameter(p.clone()) for p in start]
    opt = _torch_optimizer(settings, reference)
    ours = [p.clone() for p in start]
    functional = FunctionalOptimizer(settings)
    for step in grads:
        for p, g in zip(reference, step, strict=True):
            p.grad = g.clone()
        opt.step()
        for i, (p, g) in enumerate(zip(ours, step, strict=True)):
            d, lr = functional.direction(i, g.clone(), p)
            p.add_(d, alpha=-lr)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


def test_a_block_of_rows_moves_only_its_own_state() -> None:
    # Two stacked clients; the second stops after the first step: its momentum buffer must not move.
    functional = FunctionalOptimizer(OptimizerSettings("sgd", 0.1, momentum=0.5))
    functional.direction("w", torch.ones(2, 3), rows=Rows(0, 2, 2, step=0))
    d, _ = functional.direction("w", torch.ones(1, 3), rows=Rows(0, 1, 2, step=1))
    assert d[0].tolist() == [1.5, 1.5, 1.5]  # 0.5 * 1 + 1
    assert functional.exp_avg["w"][1].tolist() == [1.0, 1.0, 1.0]  # kept
    assert FunctionalOptimizer(OptimizerSettings()).plain
    assert not FunctionalOptimizer(OptimizerSettings(momentum=0.9)).plain

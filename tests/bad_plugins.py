"""Plug-ins as a researcher might write them, broken on purpose (and one that uses the global generators).

`register()` adds them to the registries and `unregister()` removes them again, so that the tests parametrized
over every registered selector or model never see them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from torch import nn

from csfl_fabric.registry import MODELS, SELECTORS
from csfl_fabric.selection.base import ClientSelector
from csfl_fabric.state import Selection, SelectionContext

#: What `BrokenSelector` returns for each ``mode`` (a broken selection in round ``from_round`` and later).
BROKEN: dict[str, Any] = {
    "duplicate": lambda ctx: Selection(ids=np.repeat(ctx.available[:1], ctx.k)),
    "out_of_range": lambda ctx: Selection(ids=np.array([10_000] * 1 + list(ctx.available[: ctx.k - 1]))),
    "empty": lambda ctx: Selection(ids=np.zeros(0, dtype=np.int64)),
    "too_many": lambda ctx: Selection(ids=ctx.available[: ctx.k + 1]),
    "float_ids": lambda ctx: Selection(ids=ctx.available[: ctx.k].astype(float)),
    "nan_weights": lambda ctx: Selection(ids=ctx.available[: ctx.k], weights=np.full(ctx.k, np.nan)),
    "negative_weights": lambda ctx: Selection(ids=ctx.available[: ctx.k], weights=-np.ones(ctx.k)),
    "short_probs": lambda ctx: Selection(ids=ctx.available[: ctx.k], probs=np.ones(1)),
    "not_a_selection": lambda ctx: list(ctx.available[: ctx.k]),
    "raise": lambda ctx: 1 / 0,  # a bug in the plug-in, not a contract breach: a traceback is right
}


class BrokenSelector(ClientSelector):
    """Selects the first k available clients until ``from_round``, then breaks the contract as ``mode`` says."""

    def __init__(self, mode: str = "duplicate", from_round: int = 0) -> None:
        self.mode, self.from_round = mode, from_round

    def select(self, ctx: SelectionContext) -> Selection:
        """A valid selection before ``from_round``, then the broken one."""
        if ctx.round < self.from_round:
            return Selection(ids=ctx.available[: ctx.k].astype(np.int64))
        return BROKEN[self.mode](ctx)


class GlobalRngSelector(ClientSelector):
    """Draws from Python's `random` and NumPy's global generator (not ``ctx.rng``), as plug-ins often do."""

    def select(self, ctx: SelectionContext) -> Selection:
        """Half of the clients by `random.sample`, the rest by `np.random.choice`."""
        first = random.sample(sorted(ctx.available.tolist()), ctx.k // 2)
        rest = np.setdiff1d(ctx.available, first)
        second = np.random.choice(rest, ctx.k - len(first), replace=False)
        return Selection(ids=np.concatenate([first, second]).astype(np.int64))


def wrong_input_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model written for 5 features, whatever the dataset gives: builds fine, fails at the first forward."""
    return nn.Linear(5, num_classes)


ENTRIES = ((SELECTORS, "test.broken", BrokenSelector), (SELECTORS, "test.global_rng", GlobalRngSelector),
           (MODELS, "test.wrong_input", wrong_input_model))


def register() -> None:
    """Add the plug-ins to their registries."""
    for registry, name, obj in ENTRIES:
        registry.register(name)(obj)


def unregister() -> None:
    """Remove them again."""
    for registry, name, _ in ENTRIES:
        registry._entries.pop(name, None)

"""Heuristic selectors: no learning, at most the latest losses or data sizes."""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector
from csfl_fabric.state import Selection, SelectionContext


@SELECTORS.register("heuristic.random")
class RandomSelector(ClientSelector):
    """Uniform sampling without replacement (McMahan et al., AISTATS 2017, https://arxiv.org/abs/1602.05629).

    Every available client is equally likely; no client appears twice. Aggregation stays n-weighted.
    """

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        k = min(ctx.k, len(ctx.available))
        ids = ctx.rng.choice(ctx.available, size=k, replace=False)
        return Selection(ids=ids.astype(np.int64), probs=np.full(k, k / len(ctx.available)))

"""The speed bench's two loops without csfl_fabric: the bare FedAvg baseline and the batched floor."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bare import bare_fedavg, batched_floor  # noqa: E402

SIZES = (5, 1, 12, 3)  # batch 4: 2, 1, 3 and 1 steps


def _counting_model() -> tuple[nn.Module, list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16, 3))
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _, args: batches.append(len(args[0])))
    return model, batches


def test_the_floor_takes_one_step_per_local_step_over_every_client_and_bare_one_per_batch() -> None:
    x, y = torch.randn(sum(SIZES), 1, 4, 4), torch.randint(0, 3, (sum(SIZES),))
    bounds = np.cumsum((0, *SIZES))
    parts = [np.arange(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    runs = {}
    for name, loop in (("bare", bare_fedavg), ("floor", batched_floor)):
        model, batches = _counting_model()
        times = loop(model, x, y, parts, rounds=1, per_round=len(parts), batch_size=4, lr=0.1)
        assert len(times) == 1
        assert times[0] > 0
        runs[name] = batches
    assert sorted(runs["bare"], reverse=True) == [4, 4, 4, 4, 3, 1, 1]  # each client's own batches, one by one
    # Step 0: every client's first batch (4 + 1 + 4 + 3); step 1: clients 0 and 2 (1 + 4); step 2: client 2 (4).
    assert runs["floor"] == [12, 5, 4]
    assert sum(runs["floor"]) == sum(runs["bare"]) == sum(SIZES)

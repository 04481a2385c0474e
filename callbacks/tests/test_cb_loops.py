"""csfl_callbacks on its own: what importing it loads, and the policies in a plain PyTorch loop and a Fabric loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from csfl_callbacks import HOOKS, Callback, GarbageCollect, HookDispatcher, MemoryMonitor, MemoryPolicies, RamGuard
from csfl_callbacks.accounting import GIB, RamReading
from lightning.fabric import Fabric
from torch import nn

HEAVY = ("lightning", "omegaconf", "wandb", "scipy", "matplotlib", "sklearn", "torchvision", "csfl_fabric")


def test_importing_csfl_callbacks_loads_none_of_the_simulator_stack() -> None:
    # A fresh interpreter: this one has everything loaded already.
    code = ("import sys, json, csfl_callbacks, csfl_callbacks.memory, csfl_callbacks.dispatch, "
            "csfl_callbacks.accounting; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root), "PATH": ""}, cwd=root)
    loaded = set(json.loads(out.stdout))
    assert "torch" in loaded
    assert "csfl_callbacks" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def _reading(frac: float) -> RamReading:
    return RamReading(used=int(frac * 8 * GIB), limit=8 * GIB, source="fake")


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> float:
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_policies_in_a_plain_pytorch_loop_release_what_they_were_handed() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cache: dict[int, torch.Tensor] = {}
    frac = iter([0.1] * 6 + [0.95] * 100)  # RAM "fills up" in the third epoch
    policies = MemoryPolicies(GarbageCollect(every_n_rounds=1),
                              RamGuard(threshold=0.9, reader=lambda: _reading(next(frac)), client_interval_s=0,
                                       release=[cache.clear]),
                              MemoryMonitor(reader=lambda: _reading(0.2)))
    seen: list[dict[str, float]] = []
    policies.run_start()
    for epoch in range(3):
        for step in range(2):
            cache[step] = torch.randn(16)
            _step(model, opt)
            policies.client_end()
        metrics: dict[str, float] = {}
        policies.round_end(epoch, metrics)
        seen.append(metrics)
    policies.run_end()
    assert [m["mem/emergency_cleanups"] for m in seen] == [0.0, 0.0, 3.0]  # 2 clients + the round of epoch 2
    assert cache == {}  # the third epoch's cleanups emptied the cache they were handed
    assert seen[0]["mem/ram_frac"] == pytest.approx(0.2)
    assert not policies.should_stop


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_round_start(self, state: Any) -> None:
        self.calls.append(("on_round_start", state["round"]))

    def on_round_end(self, state: Any, metrics: dict[str, float]) -> None:
        self.calls.append(("on_round_end", sorted(metrics)))


def test_policies_and_callbacks_in_a_fabric_loop() -> None:
    # The policies' hooks take keyword arguments only, as `fabric.call` passes them.
    guard = RamGuard(threshold=0.5, abort_threshold=0.9, reader=lambda: _reading(0.95))
    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[MemoryPolicies(guard, MemoryMonitor()), recorder])
    model, opt = fabric.setup(nn.Linear(4, 2), torch.optim.SGD(nn.Linear(4, 2).parameters(), lr=0.1))
    state: dict[str, Any] = {"round": 0, "should_stop": False, "stop_reason": ""}

    class State(dict):  # the policies set attributes on the state, as on the simulator's RunState
        def __setattr__(self, key: str, value: Any) -> None:
            self[key] = value

        def __getattr__(self, key: str) -> Any:
            return self[key]

    state = State(state)
    fabric.call("on_run_start", state=state, orchestrator=None)
    rounds = 0
    while not state.should_stop and rounds < 5:
        fabric.call("on_round_start", state=state)
        fabric.call("on_client_end", state=state, client_id=0, result=None)
        metrics: dict[str, float] = {}
        fabric.call("on_round_end", state=state, metrics=metrics, orchestrator=None)
        rounds += 1
        state["round"] = rounds
    fabric.call("on_run_end", state=state, orchestrator=None)
    assert rounds == 1  # RAM stayed above the abort threshold after the cleanup: the loop was asked to stop
    assert state.stop_reason.startswith("RamGuard: RAM at 95%")
    assert recorder.calls[0] == ("on_round_start", 0)
    assert "mem/process_gb" in recorder.calls[1][1]
    assert "mem/emergency_cleanups" in recorder.calls[1][1]


def test_the_dispatcher_fires_every_hook_name_of_the_base() -> None:
    fired: list[str] = []

    class All(Callback):
        pass

    for hook in HOOKS:
        setattr(All, hook, lambda self, _h=hook, **kw: fired.append(_h))
    call = HookDispatcher([All()])
    for hook in HOOKS:
        call(hook, state=None)
    assert fired == list(HOOKS)

from __future__ import annotations

from typing import Any

import pytest
from csfl_callbacks import Callback
from csfl_callbacks.dispatch import HookDispatcher
from lightning.fabric import Fabric


class Narrow:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def on_client_end(self, client_id: int) -> None:
        self.log.append(("narrow", client_id))


class Wide:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def on_client_end(self, **kwargs: Any) -> None:
        self.log.append(("wide", sorted(kwargs)))


class Sub(Callback):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def on_round_end(self, state: Any, metrics: dict[str, float]) -> None:
        metrics["sub"] = 1.0
        self.log.append(("sub", state))


def test_same_calls_as_fabric_call_in_list_order() -> None:
    kwargs = {"state": "s", "client_id": 3, "result": "r"}
    ours: list[Any] = []
    HookDispatcher([Narrow(ours), Wide(ours), Sub(ours)])("on_client_end", **kwargs)
    theirs: list[Any] = []
    Fabric(accelerator="cpu", callbacks=[Narrow(theirs), Wide(theirs), Sub(theirs)]).call("on_client_end", **kwargs)
    assert ours == theirs == [("narrow", 3), ("wide", ["client_id", "result", "state"])]


def test_hooks_are_resolved_once_and_inherited_no_ops_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    import csfl_callbacks.dispatch as dispatch

    lookups: list[Any] = []
    original = dispatch._accepted_names
    monkeypatch.setattr(dispatch, "_accepted_names", lambda m: lookups.append(m) or original(m))
    log: list[Any] = []
    call = HookDispatcher([Sub(log), Narrow(log)])
    metrics: dict[str, float] = {}
    for _ in range(3):
        call("on_round_end", state="s", metrics=metrics, orchestrator=None)
    call("on_client_start", state="s", client_id=1)  # Sub inherits a no-op, Narrow lacks it: nothing runs
    assert log == [("sub", "s")] * 3
    assert metrics == {"sub": 1.0}
    assert len(lookups) == 1  # one signature lookup for Sub.on_round_end, none per call

"""Resumed runs add up: a summary's wall seconds and counters cover every session, not just the last."""

from __future__ import annotations

import json

import pytest
from csfl_callbacks.memory import GarbageCollect, MemoryPolicies, RamGuard

import csfl_fabric
from csfl_fabric.engine.checkpoint import load_checkpoint
from csfl_fabric.engine.resume import latest_checkpoint
from tests.conftest import SMOKE


def test_wall_seconds_are_summed_over_sessions(smoke: list[str]) -> None:
    # Prepare: a 3-round run, its final checkpoint, then the run extended to 5 rounds by a resume.
    first = csfl_fabric.run(SMOKE, smoke)
    before = load_checkpoint(latest_checkpoint(first.run_dir))["state"]  # type: ignore[arg-type]
    second = csfl_fabric.resume(first.run_dir, ["rounds.num_rounds=5"])
    summary = json.loads((first.run_dir / "summary.json").read_text())

    # Assert: the first session's seconds (up to its final checkpoint) plus the second's, in two sessions.
    assert first.summary["sessions"] == 1
    assert first.summary["wall_seconds"] == first.summary["wall_seconds_session"]
    assert first.summary["wall_seconds"] - 0.5 <= before["wall_seconds"] <= first.summary["wall_seconds"]
    assert summary["sessions"] == 2
    assert summary["rounds_completed"] == 5
    assert summary["wall_seconds"] == pytest.approx(before["wall_seconds"] + summary["wall_seconds_session"])
    assert summary["wall_seconds"] > first.summary["wall_seconds"]
    assert second.summary == summary


def test_memory_policies_carry_their_counters_across_a_resume() -> None:
    guard = RamGuard(threshold=0.5, reader=lambda: type("R", (), {"frac": 0.9, "limit": 1, "source": "test"})())
    policies = MemoryPolicies(GarbageCollect(), guard)
    guard.check()
    guard.check()
    # A later session may switch the garbage collector off: the guard's state is found by its class.
    resumed = MemoryPolicies(RamGuard())
    resumed.load_state_dict(policies.state_dict())
    metrics: dict[str, float] = {}
    resumed.policies[0].reader = lambda: type("R", (), {"frac": 0.1, "limit": 1, "source": "test"})()
    resumed.round_end(0, metrics)
    assert metrics["mem/emergency_cleanups"] == 2.0

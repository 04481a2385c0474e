"""The memory policies on their own: cadence, RamGuard cleanups and what they release, the monitor's figures."""

from __future__ import annotations

import gc

import csfl_callbacks.memory as memory
import pytest
import torch
from csfl_callbacks import EmptyCudaCache, GarbageCollect, MemoryMonitor, RamGuard, release_memory
from csfl_callbacks.accounting import GIB, RamReading


def _fake_reading(frac: float) -> RamReading:
    return RamReading(used=int(frac * 8 * GIB), limit=8 * GIB, source="fake")


def test_garbage_collect_cadence_and_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or 0)
    policy = GarbageCollect(every_n_rounds=2)
    for r in range(6):
        before = len(calls)
        policy.round_end(r, {})
        if len(calls) > before:
            calls[-1] = r
    assert calls == [1, 3, 5]
    GarbageCollect(every_n_rounds=0).round_end(0, {})
    assert calls == [1, 3, 5]


def test_empty_cuda_cache_is_a_noop_without_cuda_and_reports_what_it_released(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics: dict[str, float] = {}
    for r in range(10):
        EmptyCudaCache(every_n_rounds=5).round_end(r, metrics)
    if not torch.cuda.is_available():
        assert metrics == {}
    # Simulated CUDA: 3 GiB reserved before emptying, 1 GiB after.
    reserved = iter([3 * GIB, 1 * GIB] * 2)
    emptied: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: next(reserved))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    policy = EmptyCudaCache(every_n_rounds=5)
    for r in range(10):
        metrics = {}
        policy.round_end(r, metrics)
        assert metrics == ({"mem/cuda_cache_released_gb": 2.0} if r in (4, 9) else {})
    assert len(emptied) == 2


def test_ram_guard_logs_one_line_per_cleanup(caplog: pytest.LogCaptureFixture) -> None:
    guard = RamGuard(threshold=0.7, reader=lambda: _fake_reading(0.75))
    with caplog.at_level("WARNING", logger=memory.__name__):
        assert guard.check()
    assert len(caplog.records) == 1
    assert "Emergency memory cleanup (RAM at 75% of 8.0 GiB (fake))" in caplog.text
    assert not RamGuard(threshold=0.8, reader=lambda: _fake_reading(0.75)).check()


def test_ram_guard_checks_after_clients_at_most_every_interval() -> None:
    readings: list[int] = []

    def reader() -> RamReading:
        readings.append(1)
        return _fake_reading(0.1)

    guard = RamGuard(threshold=0.7, reader=reader, client_interval_s=3600)
    for _ in range(5):
        guard.client_end()
    assert len(readings) == 1  # the first client is checked, the next four fall inside the interval
    guard.round_end(0, {})
    assert len(readings) == 2  # rounds are always checked
    every = RamGuard(threshold=0.7, reader=reader, client_interval_s=0)
    for _ in range(3):
        every.client_end()
    assert len(readings) == 5


def test_ram_guard_validates_thresholds() -> None:
    with pytest.raises(ValueError, match="threshold"):
        RamGuard(threshold=1.5)
    with pytest.raises(ValueError, match="abort_threshold"):
        RamGuard(threshold=0.8, abort_threshold=0.5)


def test_monitor_off_and_reading_figures() -> None:
    figures = MemoryMonitor(reader=lambda: _fake_reading(0.5)).read()
    assert figures["mem/ram_used_gb"] == 4.0
    assert figures["mem/ram_frac"] == 0.5
    metrics: dict[str, float] = {}
    MemoryMonitor(every_n_rounds=3).round_end(0, metrics)
    assert metrics == {}


def test_ram_guard_cleanup_calls_what_it_was_handed_and_nothing_global() -> None:
    calls: list[str] = []
    cache = {"a": torch.ones(3)}
    guard = RamGuard(threshold=0.7, reader=lambda: _fake_reading(0.75), release=[cache.clear,
                                                                               lambda: calls.append("fn")])
    assert guard.check()
    assert cache == {}
    assert calls == ["fn"]
    # Another guard, handed nothing, releases nothing of the first one's.
    cache["b"] = torch.ones(1)
    assert RamGuard(threshold=0.7, reader=lambda: _fake_reading(0.75)).check()
    assert list(cache) == ["b"]
    assert calls == ["fn"]


def test_release_memory_reports_what_it_ran() -> None:
    calls: list[int] = []
    report = release_memory([lambda: calls.append(1), lambda: calls.append(2)], passes=1)
    assert calls == [1, 2]
    assert report.released == 2
    assert report.cuda_freed == 0 or torch.cuda.is_available()
    assert release_memory(passes=1).released == 0

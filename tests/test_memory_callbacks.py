"""Memory policies: cadence, RamGuard cleanups that leave the numbers unchanged, the monitor's keys, the registry."""

from __future__ import annotations

import csv
import gc
from pathlib import Path

import pytest
import torch

import csfl_fabric.callbacks.memory as memory
from csfl_fabric import run
from csfl_fabric.callbacks import EmptyCudaCache, GarbageCollect, MemoryMonitor, RamGuard, register_releasable
from csfl_fabric.callbacks.memory import release_memory
from csfl_fabric.memory_accounting import GIB, RamReading, process_memory

from .conftest import SMOKE


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


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


def test_garbage_collect_freezes_during_a_run_only(smoke: list[str]) -> None:
    seen: list[int] = []

    class FreezeProbe:
        def on_round_end(self) -> None:
            seen.append(gc.get_freeze_count())

    run(SMOKE, [*smoke, "rounds.num_rounds=2"], callbacks=[FreezeProbe()])
    assert all(n > 10_000 for n in seen)  # the libraries and the built run are frozen while it runs
    assert gc.get_freeze_count() == 0  # and unfrozen afterwards


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


def _fake_reading(frac: float) -> RamReading:
    return RamReading(used=int(frac * 8 * GIB), limit=8 * GIB, source="fake")


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_ram_guard_cleanups_leave_metrics_csv_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str
) -> None:
    # Prepare: the same run twice; in the second RAM reads 95% of a simulated limit, so every check cleans up.
    overrides = ["rounds.num_rounds=3", "rounds.clients_per_round=4", f"data.loader={loader}",
                 "data.max_cached_loaders=2"]
    plain = run(SMOKE, [*overrides, f"logging.dir={tmp_path / 'plain'}"])
    released: list[int] = []
    register_releasable(lambda: released.append(1))
    monkeypatch.setattr(memory, "ram_reading", lambda: _fake_reading(0.95))
    guarded = run(SMOKE, [*overrides, f"logging.dir={tmp_path / 'guarded'}", "memory.ram_threshold=0.9",
                          "memory.check_interval_s=0"])
    # Assert: identical numbers, a cleanup after every client (4) and every round (1), counted in system.csv.
    assert (plain.run_dir / "metrics.csv").read_bytes() == (guarded.run_dir / "metrics.csv").read_bytes()
    counts = [float(r["mem/emergency_cleanups"]) for r in _rows(guarded.run_dir / "system.csv")]
    assert counts == [5.0, 10.0, 15.0]
    assert len(released) >= 15
    assert guarded.summary["status"] == "success"


def test_ram_guard_logs_one_line_per_cleanup(caplog: pytest.LogCaptureFixture) -> None:
    guard = RamGuard(threshold=0.7, reader=lambda: _fake_reading(0.75))
    with caplog.at_level("WARNING", logger=memory.__name__):
        assert guard.check()
    assert len(caplog.records) == 1
    assert "Emergency memory cleanup (RAM at 75% of 8.0 GiB (fake))" in caplog.text
    assert not RamGuard(threshold=0.8, reader=lambda: _fake_reading(0.75)).check()


def test_ram_guard_abort_threshold_stops_the_run_cleanly(smoke: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "ram_reading", lambda: _fake_reading(0.97))
    result = run(SMOKE, [*smoke, "rounds.num_rounds=5", "memory.ram_threshold=0.8", "memory.abort_threshold=0.95"])
    # The stop request comes after the first client; the round finishes, is logged, and the run ends.
    assert result.summary["rounds_completed"] == 1
    assert result.summary["status"] == "success"
    assert result.summary["stop_reason"].startswith("RamGuard: RAM at 97% of 8.0 GiB (fake)")
    assert len(result.metrics) == 1


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


def test_monitor_keys_go_to_system_csv_and_metrics_csv_stays_reproducible(tmp_path: Path) -> None:
    a = run(SMOKE, [f"logging.dir={tmp_path / 'a'}", "rounds.num_rounds=2"])
    b = run(SMOKE, [f"logging.dir={tmp_path / 'b'}", "rounds.num_rounds=2"])
    keys = ["mem/ram_used_gb", "mem/ram_frac", "mem/process_gb", "mem/cuda_allocated_gb", "mem/cuda_reserved_gb",
            "mem/emergency_cleanups"]
    rows = _rows(a.run_dir / "system.csv")
    assert [r["round"] for r in rows] == ["0", "1"]
    assert set(keys) <= set(rows[0])
    assert 0 < float(rows[0]["mem/ram_frac"]) < 1
    assert 0.05 < float(rows[0]["mem/process_gb"]) < 8
    assert not any(k.startswith("mem/") for k in a.metrics[0])
    assert (a.run_dir / "metrics.csv").read_bytes() == (b.run_dir / "metrics.csv").read_bytes()


def test_monitor_off_and_reading_figures() -> None:
    figures = MemoryMonitor(reader=lambda: _fake_reading(0.5)).read()
    assert figures["mem/ram_used_gb"] == 4.0
    assert figures["mem/ram_frac"] == 0.5
    metrics: dict[str, float] = {}
    MemoryMonitor(every_n_rounds=3).round_end(0, metrics)
    assert metrics == {}


def test_registry_holds_bound_methods_weakly() -> None:
    calls: list[str] = []

    class Cache:
        def release(self) -> None:
            calls.append("cache")

    cache, plain = Cache(), {"a": 1}
    register_releasable(cache.release)
    register_releasable(lambda: calls.append("function"))
    register_releasable(plain.clear)  # a builtin's bound method cannot be weakly referenced: held as it is
    release_memory(passes=1)
    assert sorted(calls) == ["cache", "function"]
    assert plain == {}
    del cache
    gc.collect()
    calls.clear()
    report = release_memory(passes=1)
    assert calls == ["function"]  # the dead object's method is gone and was not kept alive
    assert report.cuda_freed == 0


def test_three_runs_in_one_process_do_not_accumulate_memory(tmp_path: Path) -> None:
    overrides = ["data.num_clients=50", "rounds.num_rounds=3", "rounds.clients_per_round=10", "train.model=cnn"]
    after: list[int] = []
    for i in range(3):
        run(SMOKE, [*overrides, f"logging.dir={tmp_path / str(i)}"])
        after.append(process_memory())
    assert abs(after[2] - after[0]) / after[0] <= 0.05, [a / 2**20 for a in after]



def test_memory_section_builds_the_policies_in_order() -> None:
    from csfl_fabric.build import build_memory_policies
    from csfl_fabric.config import MemoryConfig

    policies = build_memory_policies(MemoryConfig(gc_every=2, empty_cache_every=0, ram_threshold=0.8,
                                                  abort_threshold=0.9, monitor=True))
    assert [type(p).__name__ for p in policies.policies] == ["GarbageCollect", "RamGuard", "MemoryMonitor"]
    collect, guard = policies.policies[:2]
    assert isinstance(collect, GarbageCollect)
    assert collect.every_n_rounds == 2
    assert isinstance(guard, RamGuard)
    assert (guard.threshold, guard.abort_threshold) == (0.8, 0.9)
    off = build_memory_policies(MemoryConfig(gc_every=0, monitor=False))
    assert [type(p).__name__ for p in off.policies] == ["EmptyCudaCache", "RamGuard"]

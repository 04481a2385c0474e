"""The memory policies inside the simulator: built from `memory:`, RamGuard releasing the run's caches, side files."""

from __future__ import annotations

import csv
import gc
from pathlib import Path

import csfl_callbacks.memory as memory
import pytest
from csfl_callbacks import GarbageCollect, RamGuard
from csfl_callbacks.accounting import GIB, RamReading, process_memory

from csfl_fabric import run
from csfl_fabric.data.store import ClientStore
from csfl_fabric.training.sequential import ClientTrainer

from .conftest import SMOKE


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_garbage_collect_freezes_during_a_run_only(smoke: list[str]) -> None:
    seen: list[int] = []

    class FreezeProbe:
        def on_round_end(self) -> None:
            seen.append(gc.get_freeze_count())

    run(SMOKE, [*smoke, "rounds.num_rounds=2"], callbacks=[FreezeProbe()])
    assert all(n > 10_000 for n in seen)  # the libraries and the built run are frozen while it runs
    assert gc.get_freeze_count() == 0  # and unfrozen afterwards


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
    # What the run hands its RamGuard to release: the store's loader cache and the trainer's state.
    released: list[str] = []
    store_release, trainer_release = ClientStore.release, ClientTrainer.release
    monkeypatch.setattr(ClientStore, "release", lambda self: released.append("store") or store_release(self))
    monkeypatch.setattr(ClientTrainer, "release", lambda self: released.append("trainer") or trainer_release(self))
    monkeypatch.setattr(memory, "ram_reading", lambda: _fake_reading(0.95))
    guarded = run(SMOKE, [*overrides, f"logging.dir={tmp_path / 'guarded'}", "memory.ram_threshold=0.9",
                          "memory.check_interval_s=0"])
    # Assert: identical numbers, a cleanup after every client (4) and every round (1), counted in system.csv.
    assert (plain.run_dir / "metrics.csv").read_bytes() == (guarded.run_dir / "metrics.csv").read_bytes()
    counts = [float(r["mem/emergency_cleanups"]) for r in _rows(guarded.run_dir / "system.csv")]
    assert counts == [5.0, 10.0, 15.0]
    assert released.count("store") >= 15
    assert released.count("trainer") >= 15
    assert guarded.summary["status"] == "success"


def test_ram_guard_abort_threshold_stops_the_run_cleanly(smoke: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "ram_reading", lambda: _fake_reading(0.97))
    result = run(SMOKE, [*smoke, "rounds.num_rounds=5", "memory.ram_threshold=0.8", "memory.abort_threshold=0.95"])
    # The stop request comes after the first client; the round finishes, is logged, and the run ends.
    assert result.summary["rounds_completed"] == 1
    assert result.summary["status"] == "success"
    assert result.summary["stop_reason"].startswith("RamGuard: RAM at 97% of 8.0 GiB (fake)")
    assert len(result.metrics) == 1


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

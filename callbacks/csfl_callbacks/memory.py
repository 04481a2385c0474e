"""Memory policies as callbacks, usable in any training loop (plain PyTorch, Fabric, ``pl.Trainer``).

Each policy has a loop-agnostic core (``client_end()``, ``round_end(round_idx, metrics)``, ``should_stop``)
and the simulator's hooks on top. In a plain PyTorch loop call the core yourself; in a ``pl.Trainer`` use
`csfl_callbacks.lightning.LightningMemoryPolicies`.

What may be released is passed in, never found through a global registry: ``RamGuard(release=[cache.clear])``
calls those functions (each must free a cache that refills itself on demand) in its cleanup;
`release_memory` runs the functions it is given, collects garbage and empties the CUDA cache, and
`emergency_cleanup` does the same with a measured log line.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from csfl_callbacks.accounting import (
    GIB,
    ProcessMemoryReader,
    RamReader,
    RamReading,
    cuda_memory,
    process_memory,
)

log = logging.getLogger(__name__)

_RAM = RamReader()


def ram_reading() -> RamReading:
    """RAM use against the binding limit (`read_ram`; the limit is looked up once a minute, the usage every time)."""
    return _RAM()


@dataclass(frozen=True)
class CleanupReport:
    """What `release_memory` did: callables run, objects collected, CUDA cache bytes handed back."""

    released: int
    collected: int
    cuda_freed: int


#: Functions that free caches which refill themselves on demand (e.g. ``[store.release, cache.clear]``).
Release = Iterable[Callable[[], object]]


def release_memory(release: Release = (), passes: int = 3) -> CleanupReport:
    """Call every function in ``release``, collect garbage (``passes`` full passes) and empty the CUDA cache.

    Safe at any point between two clients or two runs when the released caches refill themselves, so results
    do not change. Also what to call after catching a CUDA out-of-memory error, and between runs in one process.
    """
    fns = list(release)
    for fn in fns:
        fn()
    # During a run, objects frozen by `GarbageCollect` (alive when it started) are skipped: that keeps a pass at
    # milliseconds instead of ~0.3 s. Between runs they are unfrozen and collected.
    collected = sum(gc.collect() for _ in range(passes))
    _malloc_trim()
    return CleanupReport(released=len(fns), collected=collected, cuda_freed=empty_cuda_cache())


def emergency_cleanup(reason: str = "", release: Release = ()) -> CleanupReport:
    """`release_memory` with one log line: RAM and process memory before and after, and what was freed."""
    before, proc_before = ram_reading(), process_memory()
    report = release_memory(release)
    after, proc_after = ram_reading(), process_memory()
    log.warning(
        "Emergency memory cleanup%s: RAM %.2f -> %.2f GiB of %.2f GiB (%s), process %.2f -> %.2f GiB; "
        "released %d caches, collected %d objects, freed %.2f GiB of CUDA cache.",
        f" ({reason})" if reason else "", before.used / GIB, after.used / GIB, after.limit / GIB, after.source,
        proc_before / GIB, proc_after / GIB, report.released, report.collected, report.cuda_freed / GIB,
    )
    return report


def empty_cuda_cache() -> int:
    """Hand PyTorch's cached, unused CUDA memory back to the driver; returns the bytes released (0 without CUDA)."""
    reserved = cuda_memory()[1]
    if reserved == 0:
        return 0
    torch.cuda.empty_cache()
    return max(reserved - cuda_memory()[1], 0)


def _malloc_trim() -> None:
    # glibc keeps freed heap pages mapped; hand them back so that memory measured after a cleanup is real.
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryPolicy:
    """A policy's loop-agnostic core and the orchestrator hooks that drive it.

    Subclasses override `client_end` and/or `round_end`; a policy that wants the run to end sets
    ``should_stop`` and ``stop_reason``, which the hooks pass on to ``state``. Unlike `Callback` it has only
    the four hooks it uses: ``fabric.call`` inspects the signature of every hook it finds, ~0.1 ms a call, and
    no-op hooks fired around every client would cost a few percent of a small model's round. For the same
    reason `build_run` adds the configured policies as one `MemoryPolicies`.
    """

    should_stop: bool = False
    stop_reason: str = ""

    def run_start(self) -> None:
        """Call once before the first round of your loop."""

    def run_end(self) -> None:
        """Call once after the last round of your loop (also after an error)."""

    def client_end(self) -> None:
        """Call after each client (or training step) of your loop."""

    def round_end(self, round_idx: int, metrics: dict[str, float]) -> None:
        """Call after each round (or epoch) of your loop; may add ``mem/*`` entries to ``metrics``."""

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Run `run_start`."""
        self.run_start()

    def on_run_end(self, state: Any, orchestrator: Any) -> None:
        """Run `run_end`."""
        self.run_end()

    def on_client_end(self, state: Any, client_id: int, result: Any) -> None:
        """Run `client_end` and pass on a stop request."""
        self.client_end()
        self._forward_stop(state)

    def on_round_end(self, state: Any, metrics: dict[str, float], orchestrator: Any) -> None:
        """Run `round_end` and pass on a stop request."""
        self.round_end(state.round, metrics)
        self._forward_stop(state)

    def _forward_stop(self, state: Any) -> None:
        if self.should_stop and not state.should_stop:
            state.should_stop, state.stop_reason = True, self.stop_reason


def _due(round_idx: int, every: int) -> bool:
    return every > 0 and (round_idx + 1) % every == 0


class GarbageCollect(MemoryPolicy):
    """A full garbage collection every ``every_n_rounds`` rounds (0 = never).

    With torch and Lightning loaded a full collection scans ~500k objects (~0.3 s here). `run_start` freezes
    the objects alive then (``gc.freeze``), so the per-round collections scan only what the run creates
    (microseconds); `run_end` unfreezes them, so the run's objects can be collected once it is over.
    """

    def __init__(self, every_n_rounds: int = 1) -> None:
        self.every_n_rounds = every_n_rounds
        self.collected = 0

    def round_end(self, round_idx: int, metrics: dict[str, float]) -> None:
        """Collect if the round is due."""
        if _due(round_idx, self.every_n_rounds):
            self.collected += gc.collect()

    def run_start(self) -> None:
        """Exclude every object alive now from later collections."""
        if self.every_n_rounds > 0:
            gc.freeze()

    def run_end(self) -> None:
        """Undo `run_start`."""
        if self.every_n_rounds > 0:
            gc.unfreeze()


class EmptyCudaCache(MemoryPolicy):
    """Empties PyTorch's CUDA cache every ``every_n_rounds`` rounds (0 = never); a no-op without CUDA.

    Reports the reserved memory it released as ``mem/cuda_cache_released_gb`` when it runs on CUDA.
    """

    def __init__(self, every_n_rounds: int = 5) -> None:
        self.every_n_rounds = every_n_rounds

    def round_end(self, round_idx: int, metrics: dict[str, float]) -> None:
        """Empty the cache if the round is due and CUDA is in use."""
        if _due(round_idx, self.every_n_rounds) and torch.cuda.is_initialized():
            metrics["mem/cuda_cache_released_gb"] = empty_cuda_cache() / GIB


class RamGuard(MemoryPolicy):
    """Runs `emergency_cleanup` when RAM use reaches ``threshold`` of the binding (container-aware) limit.

    Checks after every round, and after a client when at least ``client_interval_s`` passed since the last
    check (a reading costs ~0.15 ms, 4% of a small client's training; a client that trains longer than the
    interval is checked every time). A cleanup only drops caches that refill themselves, so the run
    goes on to produce exactly the numbers it would have produced without it. If use is still at or above
    ``abort_threshold`` after a cleanup, the run is asked to stop cleanly (``should_stop``, ``stop_reason``)
    at the end of the round, instead of being killed by the OS.

    Args:
        threshold: fraction of the limit in (0, 1] that triggers a cleanup.
        abort_threshold: fraction at which to stop the run; None never stops it.
        reader: returns a `RamReading`; default `ram_reading`.
        client_interval_s: the least time between two checks after clients (0 checks after every client).
        release: functions the cleanup calls, each freeing a cache that refills itself on demand
            (e.g. ``[store.release, trainer.release]``).
    """

    def __init__(self, threshold: float = 0.70, abort_threshold: float | None = None,
                 reader: Callable[[], RamReading] | None = None, client_interval_s: float = 0.05,
                 release: Release = ()) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"Expected `threshold` in (0, 1] but got {threshold}.")
        if abort_threshold is not None and not threshold <= abort_threshold <= 1:
            raise ValueError(f"Expected `abort_threshold` in [threshold={threshold}, 1] or None but got "
                             f"{abort_threshold}.")
        self.threshold = threshold
        self.abort_threshold = abort_threshold
        self.reader = reader
        self.client_interval_s = client_interval_s
        self.release = list(release)
        self.cleanups = 0
        self._last_check = -math.inf

    def check(self) -> bool:
        """Read RAM use; clean up (and maybe request a stop) at or above the threshold. True if it cleaned up."""
        self._last_check = time.perf_counter()
        reading = (self.reader or ram_reading)()
        if reading.frac < self.threshold:
            return False
        emergency_cleanup(f"RAM at {reading.frac:.0%} of {reading.limit / GIB:.1f} GiB ({reading.source})",
                          self.release)
        self.cleanups += 1
        if self.abort_threshold is not None:
            after = (self.reader or ram_reading)()
            if after.frac >= self.abort_threshold:
                self.should_stop = True
                self.stop_reason = (f"RamGuard: RAM at {after.frac:.0%} of {after.limit / GIB:.1f} GiB "
                                    f"({after.source}) after a cleanup, at or above abort_threshold "
                                    f"{self.abort_threshold:.0%}")
        return True

    def client_end(self) -> None:
        """Check after a client, unless the last check is more recent than ``client_interval_s``."""
        if time.perf_counter() - self._last_check >= self.client_interval_s:
            self.check()

    def round_end(self, round_idx: int, metrics: dict[str, float]) -> None:
        """Check after a round and report the number of cleanups so far as ``mem/emergency_cleanups``."""
        self.check()
        metrics["mem/emergency_cleanups"] = float(self.cleanups)

    def state_dict(self) -> dict[str, int]:
        """The cleanups so far: a resumed run's ``mem/emergency_cleanups`` counts those of every session."""
        return {"cleanups": self.cleanups}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore what `state_dict` returned."""
        self.cleanups = int(state["cleanups"])


class MemoryMonitor(MemoryPolicy):
    """Adds per-round memory figures to the metrics (``mem/*``; see `read`).

    Args:
        every_n_rounds: how often to read (~0.2 ms without worker processes, 20-60 ms per worker process).
        reader: returns a `RamReading`; default `ram_reading`.
    """

    def __init__(self, every_n_rounds: int = 1, reader: Callable[[], RamReading] | None = None) -> None:
        self.every_n_rounds = every_n_rounds
        self.reader = reader
        self._process = ProcessMemoryReader()

    def read(self) -> dict[str, float]:
        """The figures, in GiB and as a fraction of the limit.

        ``mem/ram_used_gb`` and ``mem/ram_frac`` (container-aware, see `read_ram`), ``mem/process_gb`` (this
        process and its children, shared pages counted once, see `process_memory`; children are looked for
        every 10 s), ``mem/cuda_allocated_gb`` and ``mem/cuda_reserved_gb``.
        """
        ram = (self.reader or ram_reading)()
        allocated, reserved = cuda_memory()
        return {"mem/ram_used_gb": ram.used / GIB, "mem/ram_frac": ram.frac, "mem/process_gb": self._process() / GIB,
                "mem/cuda_allocated_gb": allocated / GIB, "mem/cuda_reserved_gb": reserved / GIB}

    def round_end(self, round_idx: int, metrics: dict[str, float]) -> None:
        """Add the readings if the round is due."""
        if _due(round_idx, self.every_n_rounds):
            metrics.update(self.read())


class MemoryPolicies(MemoryPolicy):
    """Several policies driven as one, in order: one callback for the orchestrator, one object for your loop.

    >>> policies = MemoryPolicies(GarbageCollect(every_n_rounds=1), MemoryMonitor())
    >>> metrics = {}
    >>> policies.round_end(0, metrics)
    >>> "mem/process_gb" in metrics
    True
    """

    def __init__(self, *policies: MemoryPolicy) -> None:
        self.policies = list(policies)
        # `client_end` runs after every client: only the policies that do something there.
        self._client_policies = [p for p in self.policies if type(p).client_end is not MemoryPolicy.client_end]

    def run_start(self) -> None:
        """Start every policy."""
        for p in self.policies:
            p.run_start()

    def run_end(self) -> None:
        """End every policy."""
        for p in self.policies:
            p.run_end()

    def client_end(self) -> None:
        """Run every policy's `client_end`."""
        for p in self._client_policies:
            p.client_end()
        self._gather_stop()

    def round_end(self, round_idx: int, metrics: dict[str, float]) -> None:
        """Run every policy's `round_end`."""
        for p in self.policies:
            p.round_end(round_idx, metrics)
        self._gather_stop()

    def state_dict(self) -> dict[str, Any]:
        """The state of every policy that has one, by class name (so that switching one policy off shifts none)."""
        return {type(p).__name__: p.state_dict() for p in self.policies if hasattr(p, "state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (to the policies of those classes that are still there)."""
        for p in self.policies:
            if type(p).__name__ in state and hasattr(p, "load_state_dict"):
                p.load_state_dict(state[type(p).__name__])

    def _gather_stop(self) -> None:
        stopping = [p for p in self.policies if p.should_stop]
        if stopping and not self.should_stop:
            self.should_stop, self.stop_reason = True, stopping[0].stop_reason

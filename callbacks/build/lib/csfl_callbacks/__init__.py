"""Reusable training-loop callbacks: a no-op `Callback` base, a hook dispatcher and memory policies.

Usable in any PyTorch, Lightning Fabric or ``pl.Trainer`` loop. It depends on torch and psutil only: the
Lightning adapters (`csfl_callbacks.lightning`) need the ``lightning`` extra and are not imported here.
"""

from csfl_callbacks.accounting import RamReading, cuda_memory, process_memory, read_ram
from csfl_callbacks.base import HOOKS, Callback
from csfl_callbacks.dispatch import HookDispatcher
from csfl_callbacks.memory import (
    CleanupReport,
    EmptyCudaCache,
    GarbageCollect,
    MemoryMonitor,
    MemoryPolicies,
    MemoryPolicy,
    RamGuard,
    emergency_cleanup,
    release_memory,
)

__all__ = [
    "HOOKS",
    "Callback",
    "CleanupReport",
    "EmptyCudaCache",
    "GarbageCollect",
    "HookDispatcher",
    "MemoryMonitor",
    "MemoryPolicies",
    "MemoryPolicy",
    "RamGuard",
    "RamReading",
    "cuda_memory",
    "emergency_cleanup",
    "process_memory",
    "read_ram",
    "release_memory",
]

"""Reusable callbacks: hooks named ``on_<run|round|client>_<start|end>``, dispatched with `fabric.call`'s semantics.

The Lightning adapters live in `csfl_fabric.callbacks.lightning` (not imported here: it loads ``lightning.pytorch``).
"""

from csfl_fabric.callbacks.base import HOOKS, Callback
from csfl_fabric.callbacks.checkpoint import Checkpoint
from csfl_fabric.callbacks.memory import (
    EmptyCudaCache,
    GarbageCollect,
    MemoryMonitor,
    MemoryPolicies,
    MemoryPolicy,
    RamGuard,
    emergency_cleanup,
    register_releasable,
    release_memory,
)

__all__ = [
    "HOOKS",
    "Callback",
    "Checkpoint",
    "EmptyCudaCache",
    "GarbageCollect",
    "MemoryMonitor",
    "MemoryPolicies",
    "MemoryPolicy",
    "RamGuard",
    "emergency_cleanup",
    "register_releasable",
    "release_memory",
]

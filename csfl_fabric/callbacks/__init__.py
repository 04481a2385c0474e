"""The simulator's own callbacks (checkpoints, progress, study metrics).

The reusable ones (the `Callback` base, the hook dispatcher, the memory policies) live in the separate
`csfl_callbacks` distribution (``callbacks/`` in the repository); they are re-exported here so that the
old import paths keep working for one release.
"""

from csfl_callbacks import (
    HOOKS,
    Callback,
    EmptyCudaCache,
    GarbageCollect,
    MemoryMonitor,
    MemoryPolicies,
    MemoryPolicy,
    RamGuard,
    emergency_cleanup,
    release_memory,
)

from csfl_fabric.callbacks.checkpoint import Checkpoint
from csfl_fabric.callbacks.progress import RichProgress
from csfl_fabric.registry import CALLBACKS

# What a `callbacks:` entry of a config may name (besides `module:Class`). `release` is filled in by the build.
for _name, _factory in (("memory.garbage_collect", GarbageCollect), ("memory.empty_cuda_cache", EmptyCudaCache),
                        ("memory.ram_guard", RamGuard), ("memory.monitor", MemoryMonitor),
                        ("run.progress", RichProgress)):
    CALLBACKS.register(_name)(_factory)

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
    "release_memory",
]

"""The simulator's own callbacks (checkpoints, progress, study metrics) and the registry of config callbacks.

The reusable ones (the `Callback` base, the hook dispatcher, the memory policies) live in the separate
`csfl_callbacks` distribution (``callbacks/`` in the repository). Their names are still found here
(``from csfl_fabric.callbacks import RamGuard``), so that the old import paths keep working for one release.
"""

from __future__ import annotations

from typing import Any

import csfl_callbacks
from csfl_callbacks import EmptyCudaCache, GarbageCollect, MemoryMonitor, RamGuard

from csfl_fabric.callbacks.checkpoint import Checkpoint
from csfl_fabric.callbacks.progress import RichProgress
from csfl_fabric.registry import CALLBACKS

__all__ = ["Checkpoint", "RichProgress", *csfl_callbacks.__all__]

# What a `callbacks:` entry of a config may name (besides `module:Class`). `release` is filled in by the build.
for _name, _factory in (("memory.garbage_collect", GarbageCollect), ("memory.empty_cuda_cache", EmptyCudaCache),
                        ("memory.ram_guard", RamGuard), ("memory.monitor", MemoryMonitor),
                        ("run.progress", RichProgress)):
    CALLBACKS.register(_name)(_factory)


def __getattr__(name: str) -> Any:
    if name in csfl_callbacks.__all__:
        return getattr(csfl_callbacks, name)
    raise AttributeError(f"module 'csfl_fabric.callbacks' has no attribute {name!r}")

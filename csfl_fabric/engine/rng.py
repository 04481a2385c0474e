"""The global random states (Python, NumPy, torch CPU and CUDA) that a checkpoint saves and a resume restores.

The simulator itself draws only from named streams (`csfl_fabric.build.stream`) and seeded batch orders,
but models and user code may use the global generators (dropout, random augmentation).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def global_rng_state() -> dict[str, Any]:
    """The state of every global generator."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    # is_initialized implies is_available, and is 500x cheaper (is_available probes the driver: ~70 us here).
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what `global_rng_state` returned (the CUDA states only where CUDA is in use)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

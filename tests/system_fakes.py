"""Simple system profiles for selector tests of methods with ``needs_profiles`` (no deadline: all fit)."""

from __future__ import annotations

import numpy as np

from csfl_fabric.data.systems import SystemProfiles


def fake_profiles(num_clients: int, seed: int) -> SystemProfiles:
    """Seeded heterogeneous profiles: 1-4 s of compute, 1-10 MB/s, a 1 MB model, no deadline."""
    rng = np.random.default_rng([seed, num_clients])
    speed = rng.uniform(25.0, 100.0, num_clients)
    bandwidth = rng.uniform(1e6, 1e7, num_clients)
    return SystemProfiles(speed=speed, bandwidth=bandwidth, model_bytes=1_000_000, compute_s=100.0 / speed,
                          transfer_s=1_000_000 / bandwidth)

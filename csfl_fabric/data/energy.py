"""The energy model and budget admission of the simulated clock (pure functions over numpy arrays)."""

from __future__ import annotations

import numpy as np


def round_energy(compute_s: np.ndarray, transfer_s: np.ndarray, compute_power_w: float,
                 transfer_power_w: float) -> np.ndarray:
    """Joules of one round per client: compute at ``compute_power_w``, a download and an upload at ``transfer_power_w``.

    >>> round_energy(np.array([10.0]), np.array([2.0]), compute_power_w=2.0, transfer_power_w=1.0).tolist()
    [24.0]
    """
    compute, transfer = np.asarray(compute_s, dtype=float), np.asarray(transfer_s, dtype=float)
    return compute * compute_power_w + 2 * transfer * transfer_power_w


def admit(costs: np.ndarray, budget: float | None, spent: float = 0.0) -> np.ndarray:
    """Which of ``costs`` (in priority order) fit ``budget`` after ``spent``: each is admitted if it still fits.

    A client that does not fit is skipped and the next ones are still tried (first fit in selection order).

    >>> admit(np.array([3.0, 5.0, 1.0]), budget=5.0, spent=1.0).tolist()
    [True, False, True]
    >>> admit(np.array([3.0]), budget=None).tolist()
    [True]
    """
    ok = np.ones(len(costs), dtype=bool)
    if budget is None:
        return ok
    left = budget - spent
    for i, c in enumerate(np.asarray(costs, dtype=float)):
        ok[i] = c <= left + 1e-9 * max(abs(budget), 1.0)  # round-off of sums of joules or bytes
        left -= c if ok[i] else 0.0
    return ok

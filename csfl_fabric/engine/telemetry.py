"""Selection telemetry: fairness of participation (pure functions over the run's `ClientHistory`)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csfl_fabric.engine.files import atomic_open
from csfl_fabric.state import ClientHistory, Selection


def jain_index(x: Sequence[float] | np.ndarray) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``: 1 when all are equal, ``1/n`` when one holds all.

    Jain, Chiu, Hawe, "A Quantitative Measure of Fairness and Discrimination", DEC-TR-301, 1984.
    NaN for an empty or all-zero ``x`` (undefined there).

    >>> jain_index([3, 3, 3, 3])
    1.0
    >>> jain_index([4, 0, 0, 0])
    0.25
    >>> round(jain_index([1, 2, 3]), 6)  # 36 / (3 * 14)
    0.857143
    """
    a = np.asarray(x, dtype=float)
    sq = float(np.square(a).sum())
    return float(a.sum() ** 2 / (len(a) * sq)) if sq > 0 else float("nan")


def never_selected_fraction(counts: Sequence[int] | np.ndarray) -> float:
    """Fraction of clients with a count of zero.

    >>> never_selected_fraction([0, 2, 0, 5])
    0.5
    """
    a = np.asarray(counts)
    return float((a == 0).mean()) if len(a) else float("nan")


def selection_metrics(selection: Selection, num_available: int) -> dict[str, float]:
    """Per-round summaries of a selection for metrics.csv (means of probabilities and scores when given).

    >>> selection_metrics(Selection(ids=np.array([3, 1]), probs=np.array([0.2, 0.4])), num_available=5)
    {'select/num_available': 5.0, 'select/mean_prob': 0.30000000000000004}
    """
    out = {"select/num_available": float(num_available)}
    for key, values in (("select/mean_prob", selection.probs), ("select/mean_score", selection.scores)):
        if values is not None and len(values):
            out[key] = float(np.mean(values))
    return out


def participation_summary(history: ClientHistory) -> dict[str, float]:
    """Run-level fairness of participation: Jain's index and the never-selected fraction."""
    return {"participation/jain_selected": jain_index(history.times_selected),
            "participation/jain_completed": jain_index(history.times_completed),
            "participation/never_selected_frac": never_selected_fraction(history.times_selected),
            "participation/never_completed_frac": never_selected_fraction(history.times_completed)}


def write_participation_csv(history: ClientHistory, path: str | Path) -> None:
    """One row per client: ``client_id,selected,completed,dropped``."""
    counts = [getattr(history, key) for key in history.COUNTS]
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["client_id", "selected", "completed", "dropped"])
        # A block of rows at a time: Python lists of every client's counts at once cost ~270 MB at 10^6 clients.
        for first in range(0, len(counts[0]), 2**16):
            block = np.column_stack([np.arange(first, first + len(counts[0][first : first + 2**16])),
                                     *(c[first : first + 2**16] for c in counts)])
            writer.writerows(block.tolist())

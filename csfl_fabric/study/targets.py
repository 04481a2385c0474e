"""One target for every method: the study's absolute target accuracies, each run's time to them, the ranking.

A comparison ranks methods by the rounds or time they need to reach the same absolute accuracy (as Oort,
power-of-choice, FedCor and DELTA report it), not by a fraction of each run's own gain: a method that learns
little would "reach 80% of its gain" at once. The targets are ``rounds.target_accuracy`` when the runs set it,
otherwise one study-wide default computed once over all runs of the report (`study_targets`). A run that never
reaches a target is censored ("not reached"), never infinitely fast or slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from csfl_fabric.study.metrics import as_targets, target_key, time_to_targets
from csfl_fabric.study.records import RunRecord

#: Without configured targets, the report's target is this fraction of the best accuracy any run reached.
DEFAULT_FRACTION = 0.8


def default_target(best: float, fraction: float = DEFAULT_FRACTION) -> float:
    """``fraction`` x ``best``, floored to 3 decimals (a readable key that the best run still reaches).

    >>> default_target(0.6843), default_target(0.7)
    (0.547, 0.56)
    """
    return math.floor(round(fraction * best * 1000, 6)) / 1000


def study_targets(records: Sequence[RunRecord], targets: Sequence[float] | None = None,
                  fraction: float = DEFAULT_FRACTION) -> tuple[tuple[float, ...], str]:
    """The study's target accuracies and a sentence saying how they were chosen.

    In order: ``targets`` given to the report; else every ``rounds.target_accuracy`` the runs set (the union,
    applied to every run); else ``fraction`` x the best accuracy any finished run reached, computed once over
    all runs (`default_target`).
    """
    if targets:
        return as_targets(targets), "given to the report (`--targets`)"
    configured = tuple(sorted({t for r in records for t in r.targets}))
    if configured:
        return configured, "`rounds.target_accuracy` of the runs"
    accs = [(row["eval/acc"], r.label) for r in records if r.status == "success" for row in r.rows if "eval/acc" in row]
    if not accs:
        return (), "none: no finished run was evaluated"
    best, label = max(accs)
    target = default_target(best, fraction)
    return (target,), (f"the study-wide default: {fraction:g} x the best accuracy any run reached ({best:.4g}, "
                       f"by {label}), floored to 3 decimals, the same for every run")


def add_target_metrics(records: Sequence[RunRecord], targets: Sequence[float]) -> list[str]:
    """Add ``rounds_to_acc_<t>`` / ``time_to_acc_<t>`` (NaN = not reached) to each record's in-memory summary.

    Recomputed from ``metrics.csv`` for every run, so all runs share the study's targets whatever their own
    config said. Returns the new metric keys, time first.
    """
    for r in records:
        r.summary.update(time_to_targets(r.rows, targets))
    return [target_key(kind, t) for t in targets for kind in ("time", "rounds")]


def rank(table: dict[str, dict[str, tuple[float, float, int]]], runs: dict[str, int], metric: str) -> list[str]:
    """Variants ordered by ``metric`` (a time to a target): most runs reaching it first, then the lower mean time.

    >>> table = {"fast_low": {}, "slow_high": {"t": (9.0, 1.0, 3)}, "fast_high": {"t": (4.0, 1.0, 3)}}
    >>> rank(table, {"fast_low": 3, "slow_high": 3, "fast_high": 3}, "t")
    ['fast_high', 'slow_high', 'fast_low']
    """
    def key(label: str) -> tuple[float, float, str]:
        mean, _, reached = table[label].get(metric, (math.nan, math.nan, 0))
        return -reached / max(runs.get(label, 1), 1), math.inf if math.isnan(mean) else mean, label

    return sorted(table, key=key)

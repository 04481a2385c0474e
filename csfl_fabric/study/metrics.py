"""The metrics of a selection study as pure functions: participation fairness, time to accuracy, area, gain.

Everything here works on plain arrays or on the rows of a run's ``metrics.csv`` (`summarize`), so the same
numbers come out of a finished run, a resumed one, or a report rebuilt later from the files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Fractions of a run's *own* final accuracy gain whose time to reach is reported
#: (``time_to_50pct_of_own_gain`` ...). Relative to each run, so not comparable across methods: a method that
#: learns little reaches "80% of its gain" at once. Compare methods with `time_to_targets` instead.
GAIN_FRACTIONS: tuple[float, ...] = (0.5, 0.8, 0.9)
#: The simulated-clock column (written when `systems:` is configured); without it time is counted in rounds.
SIM_TIME = "time/sim_total_s"


def participation_variance(counts: Sequence[float] | np.ndarray) -> float:
    """Population variance of how often each client took part.

    >>> participation_variance([0, 0, 0, 4])
    3.0
    """
    return float(np.var(np.asarray(counts, dtype=float)))


def gini(counts: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of participation counts: 0 when all are equal, (n-1)/n when one client takes all.

    Mean absolute difference over all ordered pairs divided by twice the mean; 0 for all-zero counts.

    >>> gini([0, 0, 0, 4])
    0.75
    >>> gini([2, 2, 2])
    0.0
    """
    x = np.sort(np.asarray(counts, dtype=float))
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2 * np.dot(ranks, x) / (n * total) - (n + 1) / n)


def normalized_entropy(counts: Sequence[float] | np.ndarray) -> float:
    """Shannon entropy of the participation shares divided by its maximum ``log(n)``: 1 is perfectly even.

    >>> normalized_entropy([1, 1, 1, 1])
    1.0
    >>> round(normalized_entropy([2, 1, 1, 0]), 4)  # -(.5 ln .5 + 2 * .25 ln .25) / ln 4
    0.75
    """
    x = np.asarray(counts, dtype=float)
    total = float(x.sum())
    if len(x) <= 1 or total == 0:
        return 1.0 if len(x) == 1 else math.nan
    p = x[x > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(len(x)))


def label_coverage(present: np.ndarray, cohort: Sequence[int] | np.ndarray) -> float:
    """Share of the classes held by at least one client of ``cohort``.

    Args:
        present: bool matrix, ``present[c, k]`` is True when client ``c`` holds a sample of class ``k``.
        cohort: the round's client ids.

    >>> label_coverage(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=bool), [0, 2])
    0.3333333333333333
    """
    if len(cohort) == 0:
        return 0.0
    return float(present[np.asarray(cohort, dtype=np.int64)].any(axis=0).mean())


def time_to_reach(times: Sequence[float], values: Sequence[float], threshold: float) -> float:
    """The first time at which ``values`` reaches ``threshold``; NaN if never.

    >>> time_to_reach([1, 2, 3], [0.2, 0.6, 0.9], 0.5)
    2.0
    >>> time_to_reach([1, 2, 3], [0.2, 0.6, 0.9], 0.95)
    nan
    """
    for t, v in zip(times, values, strict=True):
        if v >= threshold:
            return float(t)
    return math.nan


def trapezoid_auc(times: Sequence[float], values: Sequence[float], start: tuple[float, float] | None = None) -> float:
    """Area under a piecewise-linear curve (trapezoid rule), optionally from a ``(time, value)`` start point.

    >>> trapezoid_auc([1, 2], [0.5, 1.0], start=(0.0, 0.0))  # 0.25 + 0.75
    1.0
    """
    t = np.asarray(([start[0]] if start else []) + list(times), dtype=float)
    v = np.asarray(([start[1]] if start else []) + list(values), dtype=float)
    if len(t) < 2:
        return 0.0
    return float(np.sum((t[1:] - t[:-1]) * (v[1:] + v[:-1]) / 2))


def as_targets(target: float | Sequence[float] | None) -> tuple[float, ...]:
    """``rounds.target_accuracy`` (a number, a list or None) as a sorted tuple of distinct floats.

    >>> as_targets(None), as_targets(0.7), as_targets([0.8, 0.6, 0.8])
    ((), (0.7,), (0.6, 0.8))
    """
    if target is None:
        return ()
    values = [target] if isinstance(target, (int, float)) else list(target)
    return tuple(sorted({float(v) for v in values}))


def target_key(kind: str, target: float) -> str:
    """The summary key of the ``kind`` (``rounds`` or ``time``) to reach accuracy ``target``.

    >>> target_key("time", 0.7), target_key("rounds", 0.547)
    ('time_to_acc_0.7', 'rounds_to_acc_0.547')
    """
    return f"{kind}_to_acc_{target:g}"


def time_to_targets(rows: Sequence[dict[str, float]], targets: Sequence[float]) -> dict[str, float]:
    """Rounds and time to the first evaluation at or above each absolute ``target`` accuracy; NaN if never.

    The same thresholds for every run of a study (unlike the own-gain fractions), so a method that never
    gets there is *censored* (NaN, "not reached"), never "fast". Time is simulated seconds when every
    evaluated row has ``time/sim_total_s``, else rounds completed.

    >>> rows = [{"round": 0, "eval/acc": 0.5}, {"round": 1, "eval/acc": 0.7}, {"round": 2, "eval/acc": 0.9}]
    >>> time_to_targets(rows, [0.6, 0.95])
    {'rounds_to_acc_0.6': 2.0, 'time_to_acc_0.6': 2.0, 'rounds_to_acc_0.95': nan, 'time_to_acc_0.95': nan}
    """
    evaluated = [r for r in rows if "eval/acc" in r]
    clock = bool(evaluated) and all(SIM_TIME in r for r in evaluated)
    accs = [r["eval/acc"] for r in evaluated]
    rounds = [r["round"] + 1 for r in evaluated]
    times = [r[SIM_TIME] for r in evaluated] if clock else rounds
    out: dict[str, float] = {}
    for target in targets:
        out[target_key("rounds", target)] = time_to_reach(rounds, accs, target)
        out[target_key("time", target)] = time_to_reach(times, accs, target)
    return out


def summarize(rows: Sequence[dict[str, float]], initial_acc: float,
              target: float | Sequence[float] | None = None) -> dict[str, float]:
    """The per-run summary of a study from the rows of ``metrics.csv``.

    Time is simulated seconds (``time/sim_total_s``) when that column exists and rounds completed otherwise;
    ``time_unit`` says which (``"sim_s"`` or ``"rounds"``). Accuracy gain is measured from ``initial_acc``,
    the accuracy of the initial model.

    Returns:
        ``final_*`` of the last evaluated round, ``rounds_to_acc_<t>`` / ``time_to_acc_<t>`` for each
        absolute ``target`` accuracy (`time_to_targets`; NaN when not reached), ``rounds_to_<p>pct_of_own_gain``
        / ``time_to_<p>pct_of_own_gain`` for the fractions `GAIN_FRACTIONS` of the run's own final gain,
        ``auc_acc_time`` (accuracy x time, from ``(0, initial_acc)``), ``gain_per_hour`` (per simulated hour,
        or per round without a clock), participation fairness and cumulative cost of the last row.

    >>> rows = [{"round": 0, "eval/acc": 0.5}, {"round": 1, "eval/acc": 0.7}, {"round": 2, "eval/acc": 0.9}]
    >>> s = summarize(rows, initial_acc=0.1, target=0.6)
    >>> s["rounds_to_50pct_of_own_gain"], s["time_to_acc_0.6"], s["auc_acc_time"], s["time_unit"]
    (1.0, 2.0, 1.7, 'rounds')
    """
    evaluated = [r for r in rows if "eval/acc" in r]
    clock = bool(rows) and all(SIM_TIME in r for r in evaluated)
    times = [r[SIM_TIME] if clock else r["round"] + 1 for r in evaluated]
    accs = [r["eval/acc"] for r in evaluated]
    out: dict[str, float] = {"initial_acc": initial_acc, "time_unit": "sim_s" if clock else "rounds"}  # type: ignore[dict-item]
    if not evaluated:
        return out
    last, final = evaluated[-1], accs[-1]
    out.update({f"final_{k.split('/')[1]}": v for k, v in last.items() if k.startswith("eval/")})
    out.update(time_to_targets(rows, as_targets(target)))
    gain = final - initial_acc
    rounds = [r["round"] + 1 for r in evaluated]
    for frac in GAIN_FRACTIONS:
        threshold = initial_acc + frac * gain if gain > 0 else math.inf
        out[f"rounds_to_{round(frac * 100)}pct_of_own_gain"] = time_to_reach(rounds, accs, threshold)
        out[f"time_to_{round(frac * 100)}pct_of_own_gain"] = time_to_reach(times, accs, threshold)
    out["auc_acc_time"] = trapezoid_auc(times, accs, start=(0.0, initial_acc))
    out["gain_per_hour" if clock else "gain_per_round"] = gain / (times[-1] / 3600 if clock else times[-1])
    tail = rows[-1]
    out.update({k.replace("/", "_"): v for k, v in tail.items()
                if k.startswith("fair/participation") or (k.startswith("cost/") and k.endswith("_total"))})
    coverage = [r["fair/label_coverage"] for r in rows if "fair/label_coverage" in r]
    if coverage:
        out["fair_label_coverage_mean"] = float(np.mean(coverage))
    return out

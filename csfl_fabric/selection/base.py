"""The `ClientSelector` interface and the check every selection passes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from csfl_fabric.errors import ConfigError, SelectorError
from csfl_fabric.state import Feedback, Selection, SelectionContext


class ClientSelector(ABC):
    """Base class of client-selection methods.

    A selector picks clients in `select`, learns from the round's results in `update`, and keeps
    everything it learns in `state_dict` so that a resumed run selects exactly the same clients.
    Randomness comes only from ``ctx.rng``.
    """

    #: Set by methods that sample with replacement (the same client may appear twice in one round).
    allows_duplicates: bool = False
    #: Set by methods that need each trained client's flattened update in ``Feedback.updates``.
    needs_updates: bool = False
    #: Set by methods that read ``ctx.profiles`` (system speeds, bandwidths).
    needs_profiles: bool = False
    #: Set by methods whose rule is a deterministic function of their signals (a greedy, a top-k without
    #: exploration), so that with one client per round they may pick the same client every round by design;
    #: the class docstring says why. Every other method must keep exploring at k=1 (a contract test checks it).
    deterministic: bool = False
    #: Set by methods that read ``ctx.label_histograms`` (each client's label counts: the server learns them).
    needs_label_histograms: bool = False
    #: Set by methods that need ``ClientResult.grad_mean`` / ``grad_sq_mean`` (per-step gradient statistics).
    needs_grad_stats: bool = False

    @abstractmethod
    def select(self, ctx: SelectionContext) -> Selection:
        """Return at most ``ctx.k`` ids drawn from ``ctx.available``; called once at the start of each round."""

    def update(self, feedback: Feedback) -> None:  # noqa: B027 - optional hook
        """Called after aggregation with the round's selection and the trained clients' results."""

    def metrics(self) -> dict[str, float]:
        """Values to log for the round just fed back (``select/...`` keys, e.g. a bandit's reward); after `update`."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything the selector has learnt, for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless by default
        """Restore what `state_dict` returned."""


def check_selection(selection: Selection, ctx: SelectionContext, key: str, allows_duplicates: bool = False) -> None:
    """Raise `SelectorError`, naming the selector ``key`` and what it returned, if ``selection`` breaks the contract.

    The contract: a `Selection` of 1 to ``ctx.k`` integer ids from ``ctx.available`` (no id twice unless the
    selector ``allows_duplicates``), with ``probs``/``scores``/``weights`` (when given) one number per id,
    ``probs`` and ``weights`` finite, and ``weights`` >= 0 with a positive sum.
    """
    if not isinstance(selection, Selection):
        raise SelectorError(f"Selector `{key}` in round {ctx.round}: returned a {type(selection).__name__}; "
                            "`select` must return a csfl_fabric.state.Selection.")
    ids = np.asarray(selection.ids)
    problem = ""
    if ids.ndim != 1 or len(ids) == 0:
        problem = f"returned {ids.size} ids; it must return between 1 and k={ctx.k}"
    elif ids.dtype.kind not in "iu":
        problem = f"returned ids of dtype {ids.dtype}; ids must be integers"
    elif len(ids) > ctx.k:
        problem = f"returned {len(ids)} ids but k={ctx.k}"
    elif not _all_in(ids, ctx.available):
        problem = f"selected unavailable clients {sorted(set(ids.tolist()) - set(ctx.available.tolist()))[:5]}"
    elif not allows_duplicates and len(np.unique(ids)) != len(ids):
        problem = "selected a client twice"
    else:
        problem = _extras_problem(selection, len(ids))
    if problem:
        shown = np.array2string(ids.ravel()[:10], separator=", ") + (" ..." if ids.size > 10 else "")
        raise SelectorError(f"Selector `{key}` in round {ctx.round}: {problem} (returned ids {shown}).")


def _extras_problem(selection: Selection, n: int) -> str:
    for name in ("probs", "scores", "weights"):
        values = getattr(selection, name)
        if values is None:
            continue
        v = np.asarray(values, dtype=float) if np.asarray(values).dtype.kind in "biuf" else None
        if v is None or v.shape != (n,):
            return f"returned `{name}` of shape {np.shape(values)} for {n} ids; give one number per id"
        if name != "scores" and not np.isfinite(v).all():  # a score may be inf (an unexplored client)
            return f"returned non-finite `{name}` {v.tolist()[:5]}"
        if name == "weights" and ((v < 0).any() or v.sum() <= 0):
            return f"returned `weights` {v.tolist()[:5]}; weights must be >= 0 with a positive sum"
    return ""


def _all_in(ids: np.ndarray, available: np.ndarray) -> bool:
    """Whether every id is in the sorted ``available``: O(k log n) (`np.isin` sorts both, O(n log n) a round)."""
    if len(available) == 0:
        return len(ids) == 0
    at = np.searchsorted(available, ids).clip(max=len(available) - 1)
    return bool((available[at] == ids).all())


def check_param(name: str, value: object, ok: bool, hint: str) -> None:
    """Raise a one-line `ConfigError` naming ``selector.params.<name>`` when ``ok`` is False.

    >>> check_param("d", 0, False, "use d >= 1")
    Traceback (most recent call last):
    ...
    csfl_fabric.errors.ConfigError: Invalid `selector.params.d=0`: use d >= 1.
    """
    if not ok:
        raise ConfigError(f"Invalid `selector.params.{name}={value!r}`: {hint}.")


def check_number(name: str, value: object, ok: Callable[[float], bool], hint: str) -> None:
    """Like `check_param` for a numeric param: also a one-line `ConfigError` when ``value`` is not a number.

    >>> check_number("gamma", "high", lambda v: 0 < v <= 1, "use a value in (0, 1]")
    Traceback (most recent call last):
    ...
    csfl_fabric.errors.ConfigError: Invalid `selector.params.gamma='high'`: use a value in (0, 1].
    """
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    check_param(name, value, is_number and ok(float(value)), hint)  # type: ignore[arg-type]


def top_stable(values: np.ndarray, m: int) -> np.ndarray:
    """``np.argsort(-values, kind="stable")[:m]`` in O(n + m log m) instead of O(n log n).

    The positions of the ``m`` largest values, largest first, ties in position order: the same array, so a
    selector that draws from it draws the same clients (a full sort of 10^6 clients costs ~80 ms a round).

    >>> top_stable(np.array([1.0, 3.0, 2.0, 3.0, 2.0]), 4).tolist()
    [1, 3, 2, 4]
    """
    values = np.asarray(values)
    m = max(0, min(int(m), len(values)))
    if m == len(values) or np.isnan(values).any():
        return np.argsort(-values, kind="stable")[:m]
    if m == 0:
        return np.zeros(0, dtype=np.intp)
    neg = -values
    kth = np.partition(neg, m - 1)[m - 1]  # the m-th largest value, negated
    better = np.flatnonzero(neg < kth)
    chosen = np.sort(np.concatenate([better, np.flatnonzero(neg == kth)[: m - len(better)]]))
    return chosen[np.argsort(neg[chosen], kind="stable")]


def size_probs(ctx: SelectionContext) -> np.ndarray:
    """Data-size probabilities p_k = n_k / sum_j n_j over ``ctx.available``, in its order."""
    n = ctx.num_samples[ctx.available].astype(float)
    return n / n.sum()


def top_k_random_ties(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, equal scores in random order (a permutation, then a stable sort).

    >>> top_k_random_ties(np.array([0.1, 0.9, 0.5]), 2, np.random.default_rng(0)).tolist()
    [1, 2]
    """
    order = rng.permutation(len(scores))
    return order[np.argsort(-np.asarray(scores, dtype=float)[order], kind="stable")[:k]]

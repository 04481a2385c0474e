"""Hook dispatch with `Fabric.call`'s semantics, each callback's hooks resolved once per run."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from csfl_callbacks.base import Callback

_Entry = tuple[Callable[..., Any], frozenset[str] | None]


class HookDispatcher:
    """Calls ``hook(**kwargs)`` on every callback that has it, in list order, like ``fabric.call``.

    As in ``fabric.call``: callbacks without the hook are skipped, each hook gets only the keyword
    arguments its signature names (all of them if it takes ``**kwargs``), and return values are dropped.
    Unlike it, the bound method and its accepted names are looked up once per hook and callback rather
    than on every call: ``fabric.call`` runs ``inspect.signature`` each time, which measured ~0.37 ms a
    dispatch here, 20% of a 10-client round of the quickstart. Inherited no-op hooks of `Callback` are
    skipped for the same reason.

    Args:
        callbacks: the run's callbacks; the list must not change during the run.
    """

    def __init__(self, callbacks: Sequence[Any]) -> None:
        self.callbacks = list(callbacks)
        self._resolved: dict[str, list[_Entry]] = {}

    def __call__(self, hook: str, **kwargs: Any) -> None:
        """Fire ``hook`` on every callback that implements it."""
        entries = self._resolved.get(hook)
        if entries is None:
            entries = self._resolved[hook] = self._resolve(hook)
        for method, accepted in entries:
            method(**(kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}))

    def _resolve(self, hook: str) -> list[_Entry]:
        entries: list[_Entry] = []
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if not callable(method) or getattr(type(callback), hook, None) is getattr(Callback, hook, object()):
                continue
            entries.append((method, _accepted_names(method)))
        return entries


def _accepted_names(method: Callable[..., Any]) -> frozenset[str] | None:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return None  # as fabric.call: pass everything when the signature cannot be read
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)

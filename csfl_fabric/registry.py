"""Registries of named components: ``@SELECTORS.register("heuristic.random")``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from csfl_fabric.errors import InvalidParamsError, UnknownNameError

T = TypeVar("T")


def closest_first(name: str, choices: list[str]) -> list[str]:
    """Return ``choices`` sorted by similarity to ``name``, closest first.

    >>> closest_first("heuristic.rnadom", ["system.oort", "heuristic.random"])
    ['heuristic.random', 'system.oort']
    """
    return sorted(choices, key=lambda c: (-difflib.SequenceMatcher(None, name, c).ratio(), c))


class Registry:
    """A name -> factory map for one kind of component (selector, model, ...).

    Args:
        kind: what the entries are, used in error messages (e.g. ``"selector"``).
        provided: argument names the framework fills in itself (e.g. ``num_classes`` for models);
            they are not user params.
    """

    def __init__(self, kind: str, provided: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.provided = provided
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a class or function under ``name``; a second registration raises."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"A {self.kind} named `{name}` is already registered ({self._entries[name]!r}).")
            self._entries[name] = obj  # type: ignore[assignment]
            return obj

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered as ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the valid names, closest first.
        """
        if name not in self._entries:
            valid = ", ".join(closest_first(str(name), self.names()))
            raise UnknownNameError(f"Unknown {self.kind} `{name}`. Valid choices (closest first): {valid}.")
        return self._entries[name]

    def build(self, name: str, params: Mapping[str, Any] | None = None, **provided: Any) -> Any:
        """Call the factory of ``name`` with the user's ``params`` (checked) and the framework's ``provided`` args."""
        factory = self.get(name)
        params = dict(params or {})
        self.check_params(name, params)
        return factory(**provided, **params)

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Raise `InvalidParamsError` if ``params`` holds a name the factory of ``name`` does not accept."""
        accepted = self.param_names(name)
        if accepted is None:
            return
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise InvalidParamsError(
                f"Unknown param `{unknown[0]}` for {self.kind} `{name}`. Valid params: {valid}."
            )

    def param_names(self, name: str) -> list[str] | None:
        """User params that the factory of ``name`` accepts (None if it takes ``**kwargs``)."""
        signature = inspect.signature(self.get(name))
        names = []
        for p in signature.parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                return None
            if p.name in self.provided:
                continue
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                names.append(p.name)
        return names

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        """The first line of the docstring of ``name``'s factory."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


DATASETS = Registry("dataset", provided=("root", "download", "num_clients", "rng"))
PARTITIONERS = Registry("partitioner", provided=("dataset", "num_clients", "rng"))
MODELS = Registry("model", provided=("input_shape", "num_classes"))
SELECTORS = Registry("selector")
AGGREGATORS = Registry("aggregator")

"""Registries of named components: ``@SELECTORS.register("heuristic.random")``."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
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
        key: what a key names, for the docs and ``csfl-fabric list`` (e.g. where its code lives).
        modules: the modules that register the built-in entries; imported on the first lookup, so that
            ``import csfl_fabric`` stays light and the registry is still complete when it is used.
        targets: also accept ``"module:attr"`` for a factory that is not registered (your own class).
    """

    def __init__(self, kind: str, provided: tuple[str, ...] = (), key: str = "", modules: tuple[str, ...] = (),
                 targets: bool = False) -> None:
        self.kind = kind
        self.provided = provided
        self.key = key
        self.modules = modules
        self.targets = targets
        self._entries: dict[str, Callable[..., Any]] = {}
        self._loaded = not modules

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a module being imported may look itself up
            for module in self.modules:
                importlib.import_module(module)

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
        if self.targets and ":" in str(name):
            return _import_target(self.kind, name)
        self._load()
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
        self._load()
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        """The first line of the docstring of ``name``'s factory."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __len__(self) -> int:
        self._load()
        return len(self._entries)


def import_user_module(name: str) -> ModuleType:
    """Import a user's module from the working directory or PYTHONPATH (plug-ins, ``module:Class`` targets).

    Raises:
        ImportError: anything the import raised, ``sys.exit`` included, as one line (``str`` of the error) that
            the caller puts into its own message naming the config key.
    """
    # The console script's sys.path starts at its bin/ folder, not the working directory users run from.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as e:  # any failure inside user code (sys.exit too) is one line
        reason = (f"it called sys.exit({e.code!r}) on import" if isinstance(e, SystemExit)
                  else " ".join(f"{type(e).__name__}: {e}".split()))
        raise ImportError(reason) from None


def _import_target(kind: str, target: str) -> Callable[..., Any]:
    """The object named by ``"module:attr"``, imported from the working directory or PYTHONPATH."""
    module_name, _, attr = target.partition(":")
    try:
        module = import_user_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError) as e:
        reason = str(e) if isinstance(e, ImportError) else " ".join(f"{type(e).__name__}: {e}".split())
        raise UnknownNameError(f"Could not load {kind} `{target}` ({reason}): write it as `module:Class` with the "
                               "module on PYTHONPATH, or use a registered name.") from None
    if not callable(obj):
        raise UnknownNameError(f"{kind.capitalize()} target `{target}` is a {type(obj).__name__}, not a class or "
                               "function.")
    return obj  # type: ignore[no-any-return]


DATASETS = Registry("dataset", provided=("root", "download", "num_clients", "rng"),
                    key="a dataset name (`csfl_fabric/data/datasets.py`)", modules=("csfl_fabric.data",))
PARTITIONERS = Registry("partitioner", provided=("dataset", "num_clients", "rng"),
                        key="a partitioner name (`csfl_fabric/data/partition.py`)", modules=("csfl_fabric.data",))
MODELS = Registry("model", provided=("input_shape", "num_classes"), key="a model name (`csfl_fabric/models.py`)",
                  modules=("csfl_fabric.models",))
SELECTORS = Registry("selector", key="`family.method`: the family names the package `csfl_fabric/selection/<family>/`",
                     modules=("csfl_fabric.selection",))
AGGREGATORS = Registry("aggregator", key="an aggregator name (`csfl_fabric/aggregation/`)",
                       modules=("csfl_fabric.aggregation",))
CALLBACKS = Registry("callback", provided=("release",),
                     key="`family.name`, e.g. `memory.ram_guard` (`csfl_fabric/callbacks/`), or `module:Class`",
                     modules=("csfl_fabric.callbacks",), targets=True)

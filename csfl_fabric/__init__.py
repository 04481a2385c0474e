"""csfl_fabric: a federated-learning simulator for client-selection research on Lightning Fabric.

The public names below are loaded on first use: ``import csfl_fabric`` alone imports no training, plotting,
statistics or vision code (the registries import their built-in implementations on their first lookup).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from csfl_fabric import _compat

_compat.install()

#: public name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    "AGGREGATORS": "csfl_fabric.registry",
    "CALLBACKS": "csfl_fabric.registry",
    "DATASETS": "csfl_fabric.registry",
    "MODELS": "csfl_fabric.registry",
    "PARTITIONERS": "csfl_fabric.registry",
    "SELECTORS": "csfl_fabric.registry",
    "Callback": "csfl_callbacks.base",
    "ClientResult": "csfl_fabric.state",
    "ClientSelector": "csfl_fabric.selection.base",
    "ComparisonResult": "csfl_fabric.study.compare",
    "Config": "csfl_fabric.config",
    "Feedback": "csfl_fabric.state",
    "Params": "csfl_fabric.state",
    "RunResult": "csfl_fabric.api",
    "Selection": "csfl_fabric.state",
    "SelectionContext": "csfl_fabric.state",
    "compare": "csfl_fabric.study.compare",
    "load_config": "csfl_fabric.config",
    "resume": "csfl_fabric.api",
    "run": "csfl_fabric.api",
}
__all__ = [
    "AGGREGATORS",
    "CALLBACKS",
    "Callback",
    "ClientResult",
    "ClientSelector",
    "ComparisonResult",
    "Config",
    "DATASETS",
    "Feedback",
    "MODELS",
    "PARTITIONERS",
    "Params",
    "RunResult",
    "SELECTORS",
    "Selection",
    "SelectionContext",
    "compare",
    "load_config",
    "resume",
    "run",
]

if TYPE_CHECKING:
    from csfl_callbacks.base import Callback

    from csfl_fabric.api import RunResult, resume, run
    from csfl_fabric.config import Config, load_config
    from csfl_fabric.registry import AGGREGATORS, CALLBACKS, DATASETS, MODELS, PARTITIONERS, SELECTORS
    from csfl_fabric.selection.base import ClientSelector
    from csfl_fabric.state import ClientResult, Feedback, Params, Selection, SelectionContext
    from csfl_fabric.study.compare import ComparisonResult, compare


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'csfl_fabric' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """This package's module type: an old submodule path must not shadow a public function of the same name."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the old path `csfl_fabric.compare` makes Python bind that module here as `compare`.
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

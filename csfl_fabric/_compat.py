"""Old import paths of the public API (before the package was split into folders), kept for one release.

``import csfl_fabric.trainer`` still works and gives the module now at ``csfl_fabric.training.sequential``
(with a `DeprecationWarning`): a meta-path finder maps each old name to its new module, so the old paths
need no stub files. Remove after 0.2.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old module -> the module that holds its code now.
MOVED: dict[str, str] = {
    "csfl_fabric.trainer": "csfl_fabric.training.sequential",
    "csfl_fabric.cohort": "csfl_fabric.training.cohort",
    "csfl_fabric.flat": "csfl_fabric.training.flat",
    "csfl_fabric.orchestrator": "csfl_fabric.engine.orchestrator",
    "csfl_fabric.faults": "csfl_fabric.engine.guard",
    "csfl_fabric.signals": "csfl_fabric.engine.signals",
    "csfl_fabric.distributed": "csfl_fabric.engine.distributed",
    "csfl_fabric.rng": "csfl_fabric.engine.rng",
    "csfl_fabric.resume": "csfl_fabric.engine.resume",
    "csfl_fabric.loggers": "csfl_fabric.engine.loggers",
    "csfl_fabric.telemetry": "csfl_fabric.engine.telemetry",
    "csfl_fabric.compare": "csfl_fabric.study.compare",
    "csfl_fabric.report": "csfl_fabric.study.report",
    "csfl_fabric.report_md": "csfl_fabric.study.markdown",
    "csfl_fabric.plots": "csfl_fabric.study.plots",
    "csfl_fabric.stats": "csfl_fabric.study.stats",
    "csfl_fabric.metrics": "csfl_fabric.study.metrics",
    "csfl_fabric.cli_study": "csfl_fabric.study.cli",
    "csfl_fabric.memory_accounting": "csfl_callbacks.accounting",
    "csfl_fabric.callbacks.base": "csfl_callbacks.base",
    "csfl_fabric.callbacks.dispatch": "csfl_callbacks.dispatch",
    "csfl_fabric.callbacks.memory": "csfl_callbacks.memory",
    "csfl_fabric.callbacks.lightning": "csfl_callbacks.lightning",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the module it moved to (the same module object)."""

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old name, None for every other."""
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        """Python's default module (replaced in `exec_module`)."""
        return None

    def exec_module(self, module: ModuleType) -> None:
        """Put the new module under the old name: the import then returns the new module itself."""
        new = MOVED[module.__name__]
        warnings.warn(f"`{module.__name__}` moved to `{new}`; the old path goes away in 0.2.", DeprecationWarning,
                      stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    """Add the finder once, after the standard ones (a real module of an old name would still win)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

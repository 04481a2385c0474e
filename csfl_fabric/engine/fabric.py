"""Lightning Fabric, imported without the torchmetrics, torchvision and Trainer that a run does not use.

``import lightning.fabric`` first runs ``lightning/__init__``, which imports Lightning's Trainer, and Fabric's
``utilities/imports.py`` reads torchmetrics' version with ``lightning_utilities.compare_version``, which imports
the package to read it: torchmetrics then imports torchvision's models and ops. Measured on the 2-core VM
(2026-12-01, after ``import torch``): ``import lightning.fabric`` 3.1 s; the standalone ``lightning_fabric``
(the same code, shipped in pytorch-lightning's wheel) with torchmetrics' version read from its metadata 1.0 s.
That flag is read only by Fabric's ``SpikeDetection``, which csfl_fabric does not use; it still gets the right
value. Everything in csfl_fabric imports Fabric from here, so that its classes are of one package.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib import metadata


def _import_fabric() -> types.ModuleType:
    if importlib.util.find_spec("lightning_fabric") is None:  # a Lightning without the standalone copy
        import lightning.fabric

        return lightning.fabric
    try:
        version = metadata.version("torchmetrics")
    except metadata.PackageNotFoundError:  # compare_version finds nothing to import either
        version = None
    stub = None
    if version is not None and "torchmetrics" not in sys.modules:
        stub = types.ModuleType("torchmetrics")
        stub.__version__ = version
        sys.modules["torchmetrics"] = stub
    try:
        import lightning_fabric
    finally:
        if stub is not None and sys.modules.get("torchmetrics") is stub:
            del sys.modules["torchmetrics"]  # a later `import torchmetrics` gets the real package
    return lightning_fabric


_fabric = _import_fabric()
Fabric = _fabric.Fabric
DDPStrategy = _fabric.strategies.DDPStrategy
Logger = _fabric.loggers.Logger
Precision = _fabric.plugins.Precision  # `32-true`'s plugin; the other precisions subclass it
rank_zero_only = _fabric.utilities.rank_zero_only

__all__ = ["DDPStrategy", "Fabric", "Logger", "Precision", "rank_zero_only"]

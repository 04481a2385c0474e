"""Optional dependencies: which extra of ``pyproject.toml`` installs what, and one clear line when it is missing."""

from __future__ import annotations

import importlib.util

from csfl_fabric.errors import MissingExtraError

#: extra -> the modules it installs (keep in step with ``[project.optional-dependencies]``).
EXTRAS: dict[str, tuple[str, ...]] = {"vision": ("torchvision",), "report": ("matplotlib", "scipy"),
                                      "slurm": ("submitit",), "hf": ("datasets",)}


def require(extra: str, feature: str) -> None:
    """Raise `MissingExtraError` naming ``extra`` if one of its modules is not installed.

    Args:
        extra: a key of `EXTRAS`.
        feature: what needs it, for the message (e.g. ``"dataset `mnist`"``).

    >>> require("report", "the report")  # installed here: nothing happens
    """
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}, which is not installed: install the "
                                f"`{extra}` extra, e.g. `pip install -e \".[{extra}]\"` in a checkout.")

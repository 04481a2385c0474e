"""Client selectors; importing this package registers every built-in method."""

from csfl_fabric.selection import heuristic, learning, system  # noqa: F401  (registers every family)
from csfl_fabric.selection.base import ClientSelector, check_selection

__all__ = ["ClientSelector", "check_selection"]

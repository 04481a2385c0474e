"""Client selectors; importing this package registers every built-in method."""

from csfl_fabric.selection import heuristic, system  # noqa: F401  (registers heuristic.*, system.*)
from csfl_fabric.selection.base import ClientSelector, check_selection

__all__ = ["ClientSelector", "check_selection"]

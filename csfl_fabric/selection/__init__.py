"""Client selectors; importing this package registers every built-in method."""

from csfl_fabric.selection import heuristic, learning  # noqa: F401  (registers heuristic.*, learning.*)
from csfl_fabric.selection.base import ClientSelector, check_selection

__all__ = ["ClientSelector", "check_selection"]

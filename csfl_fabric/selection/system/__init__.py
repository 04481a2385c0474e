"""System-aware selectors (``system.*``): they use the clients' speeds, bandwidths, energy and the round budgets.

Importing the package registers every method of the family; the classes stay importable from here.
"""

from csfl_fabric.selection.system.classic import FedCSSelector, OortSelector, greedy_deadline, oort_utility
from csfl_fabric.selection.system.tifl import TiFLSelector

__all__ = ["FedCSSelector", "OortSelector", "TiFLSelector", "greedy_deadline", "oort_utility"]

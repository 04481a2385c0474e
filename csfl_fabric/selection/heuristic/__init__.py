"""Heuristic selectors (``heuristic.*``): no learning, at most the latest losses, norms, sizes or label counts.

Importing the package registers every method of the family; the classes stay importable from here.
"""

from csfl_fabric.selection.heuristic.basic import (
    ComputationEfficientPowerOfChoiceSelector,
    LossSelector,
    PowerOfChoiceSelector,
    RandomSelector,
    RecentPowerOfChoiceSelector,
    RoundRobinSelector,
    SizeProportionalSelector,
    stale_losses,
)
from csfl_fabric.selection.heuristic.coverage import GradNormSelector, LabelCoverageSelector
from csfl_fabric.selection.heuristic.schemes import AdaptivePowerOfChoiceSelector, UniformScaledSelector

__all__ = ["AdaptivePowerOfChoiceSelector", "ComputationEfficientPowerOfChoiceSelector", "GradNormSelector",
           "LabelCoverageSelector", "LossSelector", "PowerOfChoiceSelector", "RandomSelector",
           "RecentPowerOfChoiceSelector", "RoundRobinSelector", "SizeProportionalSelector", "UniformScaledSelector",
           "stale_losses"]

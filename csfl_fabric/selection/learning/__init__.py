"""Learning-based selectors (``learning.*``): bandits, valuations, clustering, diversity and importance sampling.

Importing the package registers every method of the family; the classes stay importable from here.
"""

from csfl_fabric.selection.learning.balance import FedCBSSelector
from csfl_fabric.selection.learning.bandits import EpsilonGreedySelector, LinUCBSelector
from csfl_fabric.selection.learning.classic import (
    ActiveFLSelector,
    ClusteredSimilaritySelector,
    ClusteredSizeSelector,
    DivFLSelector,
    UCBSelector,
)
from csfl_fabric.selection.learning.fedcor import FedCorSelector
from csfl_fabric.selection.learning.importance import DeltaSelector, OptimalClientSamplingSelector

__all__ = ["ActiveFLSelector", "ClusteredSimilaritySelector", "ClusteredSizeSelector", "DeltaSelector", "DivFLSelector",
           "EpsilonGreedySelector", "FedCBSSelector", "FedCorSelector", "LinUCBSelector",
           "OptimalClientSamplingSelector", "UCBSelector"]

"""Learning-based selectors (``learning.*``): bandits, valuations, clustering, diversity and importance sampling.

Importing the package registers every method of the family; the classes stay importable from here.
"""

from csfl_fabric.selection.learning.classic import (
    ActiveFLSelector,
    ClusteredSimilaritySelector,
    ClusteredSizeSelector,
    DivFLSelector,
    UCBSelector,
)

__all__ = ["ActiveFLSelector", "ClusteredSimilaritySelector", "ClusteredSizeSelector", "DivFLSelector", "UCBSelector"]

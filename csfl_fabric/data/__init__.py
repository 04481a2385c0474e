"""Data: datasets (`DATASETS`), partitioners (`PARTITIONERS`), the `ClientStore` and client `systems`.

Importing this package imports every implementation module, so that the registries are complete.
"""

from csfl_fabric.data import datasets, hf, leaf, partition, partition_skew, store, systems, vision
from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.data.store import ClientData, ClientStore

__all__ = [
    "ClientData", "ClientStore", "FederatedDataset", "datasets", "hf", "leaf", "partition", "partition_skew", "store",
    "systems", "vision",
]

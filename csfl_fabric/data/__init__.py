"""Data: datasets (`DATASETS`), partitioners (`PARTITIONERS`), the `ClientStore` and client `systems`.

Importing this package imports every implementation module, so that the registries are complete.
"""

from csfl_fabric.data import datasets, partition, store, systems
from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.data.store import ClientData, ClientStore

__all__ = ["ClientData", "ClientStore", "FederatedDataset", "datasets", "partition", "store", "systems"]

"""Aggregation: the streaming `Aggregator` base (`base`) and the registered server rules (`server`)."""

from csfl_fabric.aggregation.base import Aggregator, weighted_mean
from csfl_fabric.aggregation.server import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    fedavg_step,
    fedavgm_step,
    fedopt_step,
)

__all__ = [
    "Aggregator",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "fedavg_step",
    "fedavgm_step",
    "fedopt_step",
    "weighted_mean",
]

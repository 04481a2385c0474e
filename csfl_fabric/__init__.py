"""csfl_fabric: a federated-learning simulator for client-selection research on Lightning Fabric."""

# Import every implementation module so that the registries are complete.
from csfl_fabric import aggregation, data, models, selection  # noqa: F401
from csfl_fabric.api import RunResult, resume, run
from csfl_fabric.callbacks import Callback
from csfl_fabric.compare import ComparisonResult, compare
from csfl_fabric.config import Config, load_config
from csfl_fabric.registry import AGGREGATORS, DATASETS, MODELS, PARTITIONERS, SELECTORS
from csfl_fabric.selection import ClientSelector
from csfl_fabric.state import ClientResult, Feedback, Params, Selection, SelectionContext

__all__ = [
    "AGGREGATORS",
    "DATASETS",
    "MODELS",
    "PARTITIONERS",
    "SELECTORS",
    "Callback",
    "ClientResult",
    "ClientSelector",
    "ComparisonResult",
    "Config",
    "Feedback",
    "Params",
    "RunResult",
    "Selection",
    "SelectionContext",
    "compare",
    "load_config",
    "resume",
    "run",
]

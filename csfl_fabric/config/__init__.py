"""The config: its schema (`schema`), `load_config` (`loading`) and `validate` (`validation`)."""

from csfl_fabric.config.loading import HASH_EXCLUDED, config_hash, import_plugin, load_config, to_dict, to_yaml
from csfl_fabric.config.schema import (
    CHOICES,
    COMPONENTS,
    AggregatorConfig,
    CallbackConfig,
    CheckpointConfig,
    CompareConfig,
    Config,
    DataConfig,
    FabricConfig,
    LoggingConfig,
    MemoryConfig,
    PartitionConfig,
    RoundsConfig,
    SelectorConfig,
    SystemsConfig,
    TrainConfig,
)
from csfl_fabric.config.validation import validate

__all__ = [
    "CHOICES",
    "COMPONENTS",
    "HASH_EXCLUDED",
    "AggregatorConfig",
    "CallbackConfig",
    "CheckpointConfig",
    "CompareConfig",
    "Config",
    "DataConfig",
    "FabricConfig",
    "LoggingConfig",
    "MemoryConfig",
    "PartitionConfig",
    "RoundsConfig",
    "SelectorConfig",
    "SystemsConfig",
    "TrainConfig",
    "config_hash",
    "import_plugin",
    "load_config",
    "to_dict",
    "to_yaml",
    "validate",
]

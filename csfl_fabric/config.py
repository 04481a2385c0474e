"""The config schema and `load_config`: YAML file, then ``key=value`` overrides, validated before anything runs."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from csfl_fabric.errors import ConfigError, InvalidParamsError, UnknownNameError
from csfl_fabric.registry import AGGREGATORS, DATASETS, MODELS, PARTITIONERS, SELECTORS, Registry, closest_first


@dataclass
class PartitionConfig:
    """How the training set is split into clients: a partitioner name and its params."""

    name: str = "dirichlet"
    params: dict[str, Any] = field(default_factory=lambda: {"alpha": 0.5})


@dataclass
class DataConfig:
    """The dataset, where it lives, and how it is split into clients."""

    dataset: str = "digits"
    params: dict[str, Any] = field(default_factory=dict)
    root: str = "./data"
    download: bool = False
    num_clients: int = 100
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    # `tensor`: batches sliced from the shared tensors (default). `dataloader`: a DataLoader per client, created
    # on first use and kept in an LRU cache of `max_cached_loaders` (for data served by worker processes).
    loader: str = "tensor"
    num_workers: int = 0
    max_cached_loaders: int = 16


@dataclass
class TrainConfig:
    """Local training on each client."""

    model: str = "cnn"
    model_params: dict[str, Any] = field(default_factory=dict)
    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 16
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    mu: float = 0.0
    clip_grad_norm: float | None = None
    num_threads: int = 1
    backend: str = "sequential"
    cohort_size: int = 64
    eval_batch_size: int = 1024
    channels_last: bool = True
    on_divergence: str = "skip"


@dataclass
class RoundsConfig:
    """How many rounds, how many clients per round, and how often to evaluate."""

    num_rounds: int = 50
    clients_per_round: int = 10
    eval_every: int = 1
    target_accuracy: float | None = None


@dataclass
class SelectorConfig:
    """The client-selection method: a registry name and its params.

    ``module`` is written ``import`` in YAML and overrides (``selector.import=my_selectors``): a Python module
    imported before validation, so that the selector it registers can be named in ``name``.
    """

    name: str = "heuristic.random"
    params: dict[str, Any] = field(default_factory=dict)
    module: str | None = None


@dataclass
class AggregatorConfig:
    """The server-side aggregation (FedAvg or a server optimizer): a registry name and its params."""

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SystemsConfig:
    """Simulated client systems and the round clock (README "System heterogeneity and the simulated clock").

    Speeds (samples/s) and bandwidths (bytes/s, both directions) are lognormal, ``median * exp(sigma * N(0, 1))``,
    unless ``profiles`` names a CSV with columns ``client_id,speed,bandwidth``.
    """

    profiles: str | None = None
    speed_median: float = 100.0
    speed_sigma: float = 0.5
    bandwidth_median: float = 1.25e6
    bandwidth_sigma: float = 0.8
    availability: str = "always"
    availability_p: float = 0.8
    trace: str | None = None
    trace_unit: str = "round"
    dropout: float = 0.0
    deadline: float | None = None
    deadline_policy: str = "drop"
    overcommit: float = 1.0
    # Energy model (assumptions, README "Energy and budgets") and per-round budgets enforced by the clock.
    compute_power_w: float = 2.0
    transfer_power_w: float = 1.0
    time_budget_s: float | None = None
    energy_budget_j: float | None = None
    bytes_budget: float | None = None


@dataclass
class MemoryConfig:
    """Memory policies run as callbacks (0 turns one off)."""

    gc_every: int = 1
    empty_cache_every: int = 5
    ram_threshold: float = 0.70
    abort_threshold: float | None = None
    check_interval_s: float = 0.05
    monitor: bool = True


@dataclass
class CheckpointConfig:
    """Checkpoint cadence (every n rounds; 0 = only at the end) and how many checkpoints to keep."""

    every_n_rounds: int = 0
    keep: int = 2


@dataclass
class LoggingConfig:
    """Where the run directory goes and how W&B is used."""

    wandb: str = "offline"
    project: str = "csfl_fabric"
    dir: str = "runs"
    run_name: str | None = None
    progress: bool = True
    tags: list[str] = field(default_factory=list)


@dataclass
class CompareConfig:
    """A comparison (`csfl-fabric compare`): methods x seeds x sweep points, paired by seed, and its report."""

    methods: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    baseline: str | None = None
    test: str = "ttest"
    isolate: bool = False
    format: str = "png"


@dataclass
class FabricConfig:
    """Arguments passed to `lightning.fabric.Fabric`, and the timeouts of a distributed run (`FederatedDDPStrategy`)."""

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    timeout_s: float = 300.0
    startup_timeout_s: float = 600.0


@dataclass
class Config:
    """The whole experiment; see configs/quickstart.yaml for a commented example."""

    experiment: str = "default"
    seed: int = 0
    resume: str = "never"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    systems: SystemsConfig = field(default_factory=SystemsConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    fabric: FabricConfig = field(default_factory=FabricConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


# Component sections: (path, key of the registry name, registry). Switching the name starts from that
# component's own defaults: params given for the previous component are dropped, not merged.
COMPONENTS: tuple[tuple[str, str, Registry], ...] = (
    ("data", "dataset", DATASETS),
    ("data.partition", "name", PARTITIONERS),
    ("selector", "name", SELECTORS),
    ("aggregator", "name", AGGREGATORS),
)
# In these sections any key other than name/params is a param: `selector.d=5` means `selector.params.d=5`.
_SHORTHAND_SECTIONS = ("data.partition", "selector", "aggregator")
CHOICES: dict[str, tuple[str, ...]] = {
    "data.loader": ("tensor", "dataloader"),
    "train.optimizer": ("sgd", "adam"),
    "train.backend": ("sequential", "cohort"),
    "train.on_divergence": ("skip", "abort"),
    "logging.wandb": ("offline", "online", "disabled"),
    "resume": ("never", "auto"),
    "fabric.strategy": ("auto", "ddp"),
    "systems.availability": ("always", "bernoulli", "trace"),
    "systems.trace_unit": ("round", "second"),
    "systems.deadline_policy": ("drop", "wait"),
    "compare.test": ("ttest", "wilcoxon"),
    "compare.format": ("png", "pdf", "svg"),
    "fabric.precision": ("32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"),
}


def load_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Build a validated `Config` from a YAML file (or a dict) and ``key=value`` overrides.

    Args:
        source: a YAML path, a nested dict with the same keys, or None for the defaults.
        overrides: ``key=value`` strings applied after ``source`` (e.g. ``rounds.num_rounds=5``).

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a wrong type or an out-of-range value.
        UnknownNameError: an unknown dataset, model, partitioner, selector or aggregator.
        InvalidParamsError: a param that the named component does not accept.
    """
    layers = [_read_source(source), _parse_overrides(overrides)]
    cfg: DictConfig = OmegaConf.structured(Config)
    for layer in layers:
        _normalize_shorthand(layer)
        _rename_import(layer)
        _drop_params_of_switched_components(cfg, layer)
        try:
            cfg = OmegaConf.merge(cfg, layer)  # type: ignore[assignment]
        except OmegaConfBaseException as e:
            raise _one_line(e) from None
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    import_plugin(config.selector.module)
    validate(config)
    return config


def _rename_import(layer: dict[str, Any]) -> None:
    # `import` is a Python keyword, so the dataclass field is `module`.
    section = _section(layer, "selector")
    if section is not None and "import" in section:
        section["module"] = section.pop("import")


def import_plugin(module: str | None) -> None:
    """Import the user module named by ``selector.import`` (it registers its selectors on import).

    Raises:
        ConfigError: the module cannot be imported; the message says why and how to fix it.
    """
    if not module:
        return
    # The console script's sys.path starts at its bin/ folder, not the working directory users run from.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(module)
    except Exception as e:  # any failure inside user code is reported as one line naming the key
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ConfigError(f"Could not import `selector.import={module}` ({reason}): put the module on PYTHONPATH "
                          "(e.g. run from its folder) and check that it imports.") from None


def to_yaml(config: Config) -> str:
    """The resolved config as YAML (what `runs/<experiment>/<run>/config.yaml` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as a plain nested dict (e.g. for W&B)."""
    return dataclasses.asdict(config)


def _read_source(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return _plain(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"Config file `{path}` does not exist. Pass a YAML file, e.g. configs/quickstart.yaml.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"Config file `{path}` is not valid YAML{line}: {getattr(e, 'problem', e)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file `{path}` must hold a mapping of keys, but holds a {type(data).__name__}.")
    return data


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def _parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"Override `{bad[0]}` is not of the form key=value (e.g. rounds.num_rounds=5).")
    try:
        return _plain(OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides))))  # type: ignore[arg-type]
    except OmegaConfBaseException as e:
        raise ConfigError(f"Could not parse the overrides {list(overrides)}: {str(e).splitlines()[0]}.") from None


def _section(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def _normalize_shorthand(layer: dict[str, Any]) -> None:
    for path in _SHORTHAND_SECTIONS:
        section = _section(layer, path)
        if section is None:
            continue
        extra = [k for k in section if k not in ("name", "params", "import", "module")]
        if extra:
            params = section.setdefault("params", {}) or {}
            section["params"] = params
            for key in extra:
                params[key] = section.pop(key)


def _drop_params_of_switched_components(cfg: DictConfig, layer: dict[str, Any]) -> None:
    for path, name_key, _ in COMPONENTS:
        section = _section(layer, path)
        if section is None or name_key not in section:
            continue
        if section[name_key] != OmegaConf.select(cfg, f"{path}.{name_key}"):
            OmegaConf.update(cfg, f"{path}.params", {}, merge=False)


def _one_line(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError):
        parent, _, leaf = key.rpartition(".")
        valid = _schema_keys(parent)
        where = f" under `{parent}`" if parent else ""
        hint = f" Valid keys{where} (closest first): {', '.join(closest_first(leaf, valid))}."
        return ConfigError(f"Unknown config key `{key}`.{hint if valid else ''}")
    if isinstance(e, ValidationError):
        expected = _schema_type(key)
        return ConfigError(f"Expected `{key}` to be {expected} but got {e.value!r}.")  # type: ignore[attr-defined]
    return ConfigError(f"Invalid config at `{key}`: {str(e).splitlines()[0]}")


def _schema_node(path: str) -> Any:
    node: Any = Config
    for part in filter(None, path.split(".")):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        f = fields[part]
        node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        node = type(node) if dataclasses.is_dataclass(node) else f
    return node


def _schema_keys(path: str) -> list[str]:
    node = _schema_node(path)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _schema_type(path: str) -> str:
    node = _schema_node(path)
    kind = str(getattr(node, "type", "a valid value")).replace("typing.", "").replace("Optional", "optional ")
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(kind, kind)


def validate(config: Config) -> None:
    """Check value ranges, choices and component names; raise one clear error for the first problem."""
    c = config
    _at_least("seed", c.seed, 0)
    _at_least("data.num_clients", c.data.num_clients, 1)
    _at_least("rounds.num_rounds", c.rounds.num_rounds, 1)
    _at_least("rounds.eval_every", c.rounds.eval_every, 1)
    _at_least("train.local_epochs", c.train.local_epochs, 1)
    _at_least("train.batch_size", c.train.batch_size, 1)
    _at_least("train.eval_batch_size", c.train.eval_batch_size, 1)
    _at_least("train.num_threads", c.train.num_threads, 1)
    _at_least("train.cohort_size", c.train.cohort_size, 1)
    _at_least("fabric.devices", c.fabric.devices, 1)
    _at_least("fabric.num_nodes", c.fabric.num_nodes, 1)
    _at_least("memory.gc_every", c.memory.gc_every, 0)
    _at_least("memory.empty_cache_every", c.memory.empty_cache_every, 0)
    _at_least("data.num_workers", c.data.num_workers, 0)
    _at_least("data.max_cached_loaders", c.data.max_cached_loaders, 1)
    _at_least("checkpoint.every_n_rounds", c.checkpoint.every_n_rounds, 0)
    _at_least("checkpoint.keep", c.checkpoint.keep, 1)
    if c.train.local_steps is not None:
        _at_least("train.local_steps", c.train.local_steps, 1)
    if not 1 <= c.rounds.clients_per_round <= c.data.num_clients:
        raise ConfigError(
            f"Expected `rounds.clients_per_round` to be in [1, data.num_clients={c.data.num_clients}] "
            f"but got {c.rounds.clients_per_round}."
        )
    if c.train.lr <= 0:
        raise ConfigError(f"Expected `train.lr` to be > 0 but got {c.train.lr}.")
    for key, value in (("train.momentum", c.train.momentum), ("train.weight_decay", c.train.weight_decay),
                       ("train.mu", c.train.mu)):
        if value < 0:
            raise ConfigError(f"Expected `{key}` to be >= 0 but got {value}.")
    if c.train.clip_grad_norm is not None and c.train.clip_grad_norm <= 0:
        raise ConfigError(f"Expected `train.clip_grad_norm` to be > 0 or null but got {c.train.clip_grad_norm}.")
    for key, value in (("fabric.timeout_s", c.fabric.timeout_s), ("fabric.startup_timeout_s",
                                                                  c.fabric.startup_timeout_s)):
        if not value > 0:
            raise ConfigError(f"Expected `{key}` to be > 0 seconds but got {value}.")
    if not 0 < c.memory.ram_threshold <= 1:
        raise ConfigError(f"Expected `memory.ram_threshold` to be in (0, 1] but got {c.memory.ram_threshold}.")
    if c.memory.check_interval_s < 0:
        raise ConfigError(f"Expected `memory.check_interval_s` to be >= 0 but got {c.memory.check_interval_s}.")
    if c.memory.abort_threshold is not None and not c.memory.ram_threshold <= c.memory.abort_threshold <= 1:
        raise ConfigError(f"Expected `memory.abort_threshold` to be in [memory.ram_threshold={c.memory.ram_threshold}"
                          f", 1] or null but got {c.memory.abort_threshold}.")
    if c.rounds.target_accuracy is not None and not 0 < c.rounds.target_accuracy <= 1:
        raise ConfigError(f"Expected `rounds.target_accuracy` to be in (0, 1] but got {c.rounds.target_accuracy}.")
    _validate_systems(c.systems)
    for key, choices in CHOICES.items():
        section, _, leaf = key.partition(".")
        value = getattr(getattr(c, section), leaf) if leaf else getattr(c, section)
        if value not in choices:
            raise ConfigError(
                f"Unknown value {value!r} for `{key}`. Valid choices (closest first): "
                f"{', '.join(closest_first(str(value), list(choices)))}."
            )
    _check_component("data", "dataset", DATASETS, c.data.dataset, c.data.params)
    _check_component("data.partition", "name", PARTITIONERS, c.data.partition.name, c.data.partition.params)
    _check_component("selector", "name", SELECTORS, c.selector.name, c.selector.params)
    _check_component("aggregator", "name", AGGREGATORS, c.aggregator.name, c.aggregator.params)
    _check_component("train", "model", MODELS, c.train.model, c.train.model_params, params_key="model_params")


def _validate_systems(s: SystemsConfig) -> None:
    for key in ("speed_median", "bandwidth_median"):
        if not getattr(s, key) > 0:
            raise ConfigError(f"Expected `systems.{key}` to be > 0 but got {getattr(s, key)}.")
    for key in ("speed_sigma", "bandwidth_sigma"):
        if not getattr(s, key) >= 0:
            raise ConfigError(f"Expected `systems.{key}` to be >= 0 but got {getattr(s, key)}.")
    if not 0 < s.availability_p <= 1:
        raise ConfigError(f"Expected `systems.availability_p` to be in (0, 1] but got {s.availability_p}.")
    if s.availability == "trace" and not s.trace:
        raise ConfigError("`systems.availability` is `trace` but `systems.trace` is not set: give the path of a "
                          "trace CSV (client_id,start,end) or use `always` / `bernoulli`.")
    if not 0 <= s.dropout < 1:
        raise ConfigError(f"Expected `systems.dropout` to be in [0, 1) but got {s.dropout}.")
    if s.deadline is not None and not s.deadline > 0:
        raise ConfigError(f"Expected `systems.deadline` to be > 0 seconds or null but got {s.deadline}.")
    for key in ("compute_power_w", "transfer_power_w"):
        if not getattr(s, key) >= 0:
            raise ConfigError(f"Expected `systems.{key}` to be >= 0 watts but got {getattr(s, key)}.")
    for key in ("time_budget_s", "energy_budget_j", "bytes_budget"):
        value = getattr(s, key)
        if value is not None and not value > 0:
            raise ConfigError(f"Expected `systems.{key}` to be > 0 or null (no budget) but got {value}.")
    if not s.overcommit >= 1:
        raise ConfigError(f"Expected `systems.overcommit` to be >= 1 (e.g. 1.3 as in Oort) but got {s.overcommit}.")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"Expected `{key}` to be >= {low} but got {value}.")


def _check_component(
    path: str, name_key: str, registry: Registry, name: str, params: dict[str, Any], params_key: str = "params"
) -> None:
    try:
        registry.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"`{path}.{name_key}`: {e}") from None
    try:
        registry.check_params(name, params)
    except InvalidParamsError as e:
        raise InvalidParamsError(f"`{path}.{params_key}`: {e}") from None

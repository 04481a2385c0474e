"""The config schema: one dataclass per section, with the defaults (`Config` is the whole experiment)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from csfl_fabric.registry import AGGREGATORS, DATASETS, PARTITIONERS, SELECTORS, Registry
from csfl_fabric.training.settings import TrainSettings


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
class TrainConfig(TrainSettings):
    """Local training on each client: the backend's `TrainSettings` plus what the build consumes."""

    model: str = "cnn"
    model_params: dict[str, Any] = field(default_factory=dict)
    num_threads: int = 1
    backend: str = "sequential"
    cohort_size: int = 64
    on_divergence: str = "skip"


@dataclass
class RoundsConfig:
    """How many rounds, how many clients per round, how often to evaluate, and the target accuracies.

    ``target_accuracy`` is a number in (0, 1], a list of them (``rounds.target_accuracy=[0.6,0.7]``) or null:
    the absolute accuracies whose rounds and time to reach every run reports and a comparison ranks by.
    Typed ``Any`` because OmegaConf unions cannot hold a list; `validate` checks it.
    """

    num_rounds: int = 50
    clients_per_round: int = 10
    eval_every: int = 1
    target_accuracy: Any = None


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
    # The W&B group; default `<experiment>/<selector>` (a comparison adds the sweep point).
    group: str | None = None
    progress: bool = True
    # Without a terminal (a log file, a pipe), a plain progress line every this many rounds; 0 = about a tenth.
    progress_every: int = 0
    tags: list[str] = field(default_factory=list)


@dataclass
class CompareConfig:
    """A comparison (`csfl-fabric compare`): methods x seeds x sweep points, paired by seed, and its report."""

    methods: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    baseline: str | None = None
    test: str = "ttest"
    # Without `rounds.target_accuracy`, the report's target is this fraction of the best accuracy any run reached.
    target_fraction: float = 0.8
    isolate: bool = False
    format: str = "png"
    # Runs at once, each in its own process (`--jobs`); 1 runs them one after another in this process.
    jobs: int = 1


@dataclass
class SlurmConfig:
    """The SLURM resources of each job of a study (``--launcher slurm``; README "Running studies at scale").

    ``time`` is minutes (``90``) or ``[D-]HH:MM:SS``; ``mem`` is SLURM's ``--mem`` (``16G``); ``setup`` holds shell
    lines run before each job (``module load ...``, ``source .venv/bin/activate``); ``extra`` is passed to sbatch
    as ``--key=value`` (``account``, ``qos``, ``constraint``).
    """

    partition: str | None = None
    time: str = "60"
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    mem: str | None = None
    array_parallelism: int = 256
    setup: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LauncherConfig:
    """Where a study's runs go: ``local`` (this machine, `compare.jobs` at once) or ``slurm`` (a submitit job array).

    ``submitit-local`` runs the SLURM path through submitit's LocalExecutor on this machine (every job at once): a
    dry run of a cluster study. ``wait: false`` returns once the jobs are submitted (`--no-wait`).
    """

    name: str = "local"
    wait: bool = True
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


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
class CallbackConfig:
    """One entry of the ``callbacks:`` list: a ``target`` and the constructor's ``params``.

    ``target`` is a registered callback name (``csfl-fabric list callbacks``, e.g. ``memory.monitor``) or
    ``"module:Class"`` for your own class (the module is imported from the working directory or PYTHONPATH).
    """

    target: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """The whole experiment; see configs/quickstart.yaml for a commented example."""

    experiment: str = "default"
    seed: int = 0
    resume: str = "never"
    # Modules imported before validation: they register your own datasets, partitioners, models, selectors,
    # aggregators or callbacks (`selector.import` does the same for one module).
    plugins: list[str] = field(default_factory=list)
    # Extra callbacks, built after the built-in ones, in list order.
    callbacks: list[CallbackConfig] = field(default_factory=list)
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
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


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
    "launcher.name": ("local", "slurm", "submitit-local"),
    "fabric.precision": ("32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"),
}

"""The only place that reads the config and turns it into objects."""

from __future__ import annotations

import functools
import inspect
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from csfl_callbacks.memory import (
    EmptyCudaCache,
    GarbageCollect,
    MemoryMonitor,
    MemoryPolicies,
    RamGuard,
    Release,
    emergency_cleanup,
)
from lightning.fabric import Fabric

from csfl_fabric.callbacks.checkpoint import Checkpoint
from csfl_fabric.callbacks.progress import RichProgress
from csfl_fabric.callbacks.study import StudyMetrics
from csfl_fabric.config import CallbackConfig, Config, MemoryConfig, config_hash, to_dict
from csfl_fabric.data import systems
from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.data.indices import ClientIndices
from csfl_fabric.data.store import ClientStore
from csfl_fabric.engine.distributed import fabric_strategy, launch
from csfl_fabric.engine.guard import ClientGuard
from csfl_fabric.engine.loggers import CSVMetricsLogger, WandbLogger
from csfl_fabric.engine.orchestrator import Orchestrator, RoundSettings
from csfl_fabric.engine.resume import checkpoint_dir, wandb_id
from csfl_fabric.errors import USER_ERRORS, ConfigError
from csfl_fabric.registry import AGGREGATORS, CALLBACKS, DATASETS, MODELS, PARTITIONERS, SELECTORS, Registry
from csfl_fabric.training.cohort import CohortTrainer
from csfl_fabric.training.sequential import ClientTrainer, TrainSettings


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator for one stochastic component (``"partition"``, ``"selection"``, ...).

    Streams are keyed by name, so adding a stream or changing the model never changes which clients
    a seed partitions or selects.

    >>> bool(stream(0, "selection").integers(1 << 30) == stream(0, "selection").integers(1 << 30))
    True
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def run_name(config: Config) -> str:
    """The run directory's name: ``logging.run_name`` or ``<selector>-seed<k>``."""
    return config.logging.run_name or f"{config.selector.name}-seed{config.seed}"


def fresh_run_dir(config: Config) -> Path:
    """``runs/<experiment>/<run>/``, with a numeric suffix if that directory already holds a run."""
    base = Path(config.logging.dir) / config.experiment / run_name(config)
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


@dataclass
class Run:
    """Everything `build_run` made; ``orchestrator.run()`` starts it."""

    config: Config
    fabric: Fabric
    dataset: FederatedDataset
    orchestrator: Orchestrator
    run_dir: Path
    callbacks: list[Any] = field(default_factory=list)
    wandb_id: str = ""


def build_fabric(config: Config, callbacks: Sequence[Any] = (), loggers: Sequence[Any] = ()) -> Fabric:
    """The run's Fabric from the `fabric:` section (not launched yet)."""
    f = config.fabric
    strategy = fabric_strategy(f.strategy, f.devices, f.num_nodes, f.timeout_s, f.startup_timeout_s)
    return Fabric(accelerator=f.accelerator, devices=f.devices, num_nodes=f.num_nodes, strategy=strategy,
                  precision=f.precision, callbacks=list(callbacks), loggers=list(loggers))  # type: ignore[arg-type]


def build_dataset(config: Config) -> tuple[FederatedDataset, ClientIndices]:
    """Load the dataset and split its training set into clients."""
    d = config.data
    dataset = DATASETS.build(d.dataset, d.params, root=d.root, download=d.download, num_clients=d.num_clients,
                             rng=stream(config.seed, "data"))
    # One array and offsets from here on, whatever the partitioner returned: no Python object per client.
    parts = ClientIndices.of(PARTITIONERS.build(d.partition.name, d.partition.params, dataset=dataset,
                                                num_clients=d.num_clients, rng=stream(config.seed, "partition")))
    empty = np.flatnonzero(parts.sizes == 0)
    if len(empty):
        raise ConfigError(f"Partition `{d.partition.name}` left client {empty[0]} without samples: lower "
                          f"`data.num_clients` ({d.num_clients}) or change `data.partition.params`.")
    return dataset, parts


def build_memory_policies(memory: MemoryConfig, release: Release = ()) -> MemoryPolicies:
    """The `memory:` section as one callback; a RamGuard cleanup (calling ``release``) runs before the monitor reads."""
    m = memory
    policies = [GarbageCollect(m.gc_every) if m.gc_every > 0 else None,
                EmptyCudaCache(m.empty_cache_every) if m.empty_cache_every > 0 else None,
                RamGuard(m.ram_threshold, m.abort_threshold, client_interval_s=m.check_interval_s, release=release),
                MemoryMonitor() if m.monitor else None]
    return MemoryPolicies(*(p for p in policies if p is not None))


def build_systems(config: Config, num_samples: np.ndarray, model_bytes: int) -> systems.SystemModel:
    """The clients' system profiles, availability, dropouts and clock from the `systems:` section."""
    s, t = config.systems, config.train
    n = len(num_samples)
    if s.profiles:
        speed, bandwidth = systems.read_profiles(s.profiles, n)
    else:
        rng = stream(config.seed, "systems")
        speed = systems.lognormal(rng, n, s.speed_median, s.speed_sigma)
        bandwidth = systems.lognormal(rng, n, s.bandwidth_median, s.bandwidth_sigma)
    work = systems.samples_per_round(num_samples, t.batch_size, t.local_epochs, t.local_steps)
    profiles = systems.SystemProfiles(speed=speed, bandwidth=bandwidth, model_bytes=model_bytes,
                                      compute_s=work / speed, transfer_s=model_bytes / bandwidth, deadline=s.deadline)
    return systems.SystemModel(
        profiles, num_samples, stream(config.seed, "availability"), stream(config.seed, "dropout"),
        availability=s.availability, availability_p=s.availability_p,
        trace=systems.read_trace(s.trace) if s.availability == "trace" and s.trace else None,
        trace_unit=s.trace_unit, dropout=s.dropout, deadline_policy=s.deadline_policy, overcommit=s.overcommit,
    )


def build_config_callbacks(entries: Sequence[CallbackConfig], release: Release) -> list[Any]:
    """The ``callbacks:`` list of the config; a callback taking ``release`` gets the run's releasable caches."""
    built = []
    for i, entry in enumerate(entries):
        provided = {"release": list(release)} if "release" in _accepted(CALLBACKS.get(entry.target)) and \
            "release" not in entry.params else {}
        built.append(_component(f"callbacks[{i}]", CALLBACKS, entry.target, entry.params, **provided))
    return built


def build_trainer(config: Config, fabric: Fabric, dataset: FederatedDataset) -> ClientTrainer:
    """The initial model (seeded by the run's seed only) and the training backend that owns it."""
    # The initial model depends on the seed only, so every method of a comparison starts from the same weights.
    torch.manual_seed(int(stream(config.seed, "model").integers(2**63 - 1)))
    t = config.train
    model = MODELS.build(t.model, t.model_params, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
    settings = TrainSettings(local_epochs=t.local_epochs, local_steps=t.local_steps, batch_size=t.batch_size, lr=t.lr,
                             optimizer=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay, mu=t.mu,
                             clip_grad_norm=t.clip_grad_norm, eval_batch_size=t.eval_batch_size,
                             channels_last=t.channels_last)
    if t.backend == "cohort":
        return CohortTrainer(fabric, model, settings, dataset.num_classes, cohort_size=t.cohort_size)
    return ClientTrainer(fabric, model, settings, dataset.num_classes)


def build_store(config: Config, fabric: Fabric, dataset: FederatedDataset, parts: Sequence[np.ndarray]) -> ClientStore:
    """The clients' data: the dataset's tensors held once, a client a slice of one index array."""
    d = config.data
    return ClientStore(dataset.x_train, dataset.y_train, parts, seed=config.seed, device=fabric.device,
                       loader=d.loader, num_workers=d.num_workers, max_cached_loaders=d.max_cached_loaders)


def build_loggers(config: Config, run_dir: Path) -> tuple[list[Any], str]:
    """The CSV logger and, unless disabled, the W&B logger; with the run's W&B id."""
    loggers: list[Any] = [CSVMetricsLogger(run_dir)]
    wandb = WandbLogger(config.logging.wandb, config.logging.project, run_dir, config=to_dict(config),
                        name=run_dir.name, group=config.experiment, job_type=config.selector.name,
                        tags=list(config.logging.tags) or None, run_id=(run_id := wandb_id(run_dir)))
    if wandb.mode != "disabled":
        loggers.append(wandb)
    return loggers, run_id


def build_callbacks(config: Config, run_dir: Path) -> list[Any]:
    """The built-in callbacks, in the order they must run."""
    # First, so that its round-start state precedes anything other callbacks do in that round.
    callbacks: list[Any] = [Checkpoint(checkpoint_dir(run_dir), config.checkpoint.every_n_rounds,
                                       config.checkpoint.keep, meta={"config_hash": config_hash(config)}),
                            StudyMetrics()]
    if config.logging.progress:
        callbacks.append(RichProgress(f"{config.experiment} {run_name(config)}"))
    return callbacks


def build_run(config: Config, run_dir: str | Path | None = None, callbacks: Sequence[Any] = ()) -> Run:
    """Build a ready-to-run `Run` from a validated config; nothing is written to disk yet.

    The steps, in order: data, callbacks and loggers, Fabric (launched), store, model and trainer, the
    memory policies and the config's callbacks (which may release the store's and trainer's caches), and
    the orchestrator.

    Args:
        config: a config from `csfl_fabric.config.load_config`.
        run_dir: where the run writes; default ``runs/<experiment>/<selector>-seed<k>/`` (made unique).
        callbacks: extra callbacks, called after the built-in ones and the config's.
    """
    run_dir = Path(run_dir) if run_dir is not None else fresh_run_dir(config)
    dataset, parts = build_dataset(config)
    all_callbacks = build_callbacks(config, run_dir)
    loggers, run_id = build_loggers(config, run_dir)
    # Loggers and the progress bar act on global rank 0 only, so every rank may build them. The orchestrator
    # dispatches the hooks itself (`HookDispatcher`), so the callbacks added below need not reach Fabric.
    fabric = build_fabric(config, all_callbacks, loggers)
    launch(fabric)
    torch.set_num_threads(config.train.num_threads)  # after launch, which sets its own thread count
    store = build_store(config, fabric, dataset, parts)
    trainer = build_trainer(config, fabric, dataset)
    release = [store.release, trainer.release]  # caches that refill themselves: what a cleanup may free
    all_callbacks.append(build_memory_policies(config.memory, release))
    all_callbacks.extend([*build_config_callbacks(config.callbacks, release), *callbacks])
    global_params = trainer.global_params()
    model_bytes = sum(p.numel() * p.element_size() for p in global_params.values())
    # Rank 0's run directory for all (another rank may have looked after rank 0 made it, and picked a new name).
    # The broadcast also waits, up to fabric.startup_timeout_s, until every rank is set up: the rounds' short
    # fabric.timeout_s never has to cover a slow start.
    run_dir = Path(fabric.broadcast(str(run_dir), src=0))
    r = config.rounds
    orchestrator = Orchestrator(
        fabric=fabric,
        store=store,
        trainer=trainer,
        selector=_component("selector", SELECTORS, config.selector.name, config.selector.params),
        selector_key=config.selector.name,
        aggregator=_component("aggregator", AGGREGATORS, config.aggregator.name, config.aggregator.params),
        global_params=global_params,
        test_data=(dataset.x_test.to(fabric.device), dataset.y_test.to(fabric.device)),
        rounds=RoundSettings(r.num_rounds, r.clients_per_round, r.eval_every, r.target_accuracy),
        selection_rng=stream(config.seed, "selection"),
        systems=build_systems(config, store.num_samples, model_bytes),
        run_dir=run_dir,
        guard=ClientGuard(config.train.on_divergence,
                          cleanup=functools.partial(emergency_cleanup, "a client raised", release)),
        callbacks=all_callbacks,
    )
    return Run(config=config, fabric=fabric, dataset=dataset, orchestrator=orchestrator, run_dir=run_dir,
               callbacks=all_callbacks, wandb_id=run_id)


def _component(section: str, registry: Registry, name: str, params: dict[str, Any], **provided: Any) -> Any:
    """Build a selector, aggregator or callback; a param value its constructor rejects is a one-line `ConfigError`."""
    try:
        return registry.build(name, params, **provided)
    except (ValueError, TypeError) as e:
        if isinstance(e, USER_ERRORS):
            raise
        raise ConfigError(f"`{section}` `{name}`: {e}") from None


def _accepted(factory: Any) -> set[str]:
    return set(inspect.signature(factory).parameters)

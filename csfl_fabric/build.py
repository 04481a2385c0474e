"""The only place that reads the config and turns it into objects."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import threadpoolctl
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

from csfl_fabric.callbacks.checkpoint import Checkpoint
from csfl_fabric.callbacks.progress import RichProgress
from csfl_fabric.callbacks.study import StudyMetrics
from csfl_fabric.config import CallbackConfig, Config, MemoryConfig, config_hash, to_dict
from csfl_fabric.data import systems
from csfl_fabric.data.datasets import FederatedDataset
from csfl_fabric.data.indices import ClientIndices
from csfl_fabric.data.store import ClientStore
from csfl_fabric.engine.distributed import fabric_strategy, launch
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.engine.files import make_fresh_dir
from csfl_fabric.engine.guard import ClientGuard
from csfl_fabric.engine.loggers import CSVMetricsLogger, WandbLogger
from csfl_fabric.engine.orchestrator import Orchestrator, RoundSettings
from csfl_fabric.engine.resume import checkpoint_dir, wandb_id
from csfl_fabric.errors import USER_ERRORS, ConfigError
from csfl_fabric.registry import AGGREGATORS, CALLBACKS, DATASETS, MODELS, PARTITIONERS, SELECTORS, Registry
from csfl_fabric.study.metrics import as_targets
from csfl_fabric.training.cohort import CohortTrainer
from csfl_fabric.training.sequential import ClientTrainer
from csfl_fabric.training.settings import TrainSettings


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator for one stochastic component (``"partition"``, ``"selection"``, ...).

    Streams are keyed by name, so adding a stream or changing the model never changes which clients
    a seed partitions or selects.

    >>> bool(stream(0, "selection").integers(1 << 30) == stream(0, "selection").integers(1 << 30))
    True
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def seed_global_rngs(seed: int) -> None:
    """Seed Python's `random` and NumPy's global generator from their own named streams.

    The simulator never draws from them, but plug-ins (a selector using ``random.sample``, a model using
    ``np.random``) may; seeded here and saved in every checkpoint (`csfl_fabric.engine.rng`), they make such
    code reproducible and resumable too.
    """
    random.seed(int(stream(seed, "python").integers(2**63 - 1)))
    np.random.seed(int(stream(seed, "numpy").integers(2**32 - 1)))


def run_name(config: Config) -> str:
    """The run directory's name: ``logging.run_name``, or ``<selector>-seed<k>-<hash>``.

    ``<hash>`` is the first 6 characters of `config_hash` (the keys that decide the results), so runs that differ
    in any override get different folders, and ``resume: auto`` finds exactly the run of the same config.
    """
    return config.logging.run_name or f"{config.selector.name}-seed{config.seed}-{config_hash(config)[:6]}"


def default_run_dir(config: Config) -> Path:
    """``<logging.dir>/<experiment>/<run_name>/`` (not created)."""
    return Path(config.logging.dir) / config.experiment / run_name(config)


def fresh_run_dir(config: Config) -> Path:
    """Create and return ``default_run_dir``, or ``<it>-1``, ``-2``, ... if taken (atomically: one folder per run)."""
    return make_fresh_dir(default_run_dir(config))


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
    try:
        return Fabric(accelerator=f.accelerator, devices=f.devices, num_nodes=f.num_nodes, strategy=strategy,
                      precision=f.precision, callbacks=list(callbacks), loggers=list(loggers))  # type: ignore[arg-type]
    except (RuntimeError, ValueError, ImportError) as e:  # e.g. accelerator=gpu on a machine without one
        raise ConfigError(f"`fabric.accelerator={f.accelerator}` with fabric.devices={f.devices}, fabric.precision="
                          f"{f.precision} cannot start here: {' '.join(str(e).split())}") from None


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
                                      compute_s=work / speed, transfer_s=model_bytes / bandwidth, deadline=s.deadline,
                                      compute_power_w=s.compute_power_w, transfer_power_w=s.transfer_power_w,
                                      time_budget_s=s.time_budget_s, energy_budget_j=s.energy_budget_j,
                                      bytes_budget=s.bytes_budget)
    return systems.SystemModel(
        profiles, num_samples, stream(config.seed, "availability"), stream(config.seed, "dropout"),
        availability=s.availability, availability_p=s.availability_p,
        trace=systems.read_trace(s.trace, n) if s.availability == "trace" and s.trace else None,
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
    model = _component("train.model", MODELS, t.model, t.model_params, input_shape=dataset.input_shape,
                       num_classes=dataset.num_classes)
    check_model_fits(config, model, dataset)
    settings = TrainSettings(**{f.name: getattr(t, f.name) for f in dataclasses.fields(TrainSettings)})
    if t.backend == "cohort":
        return CohortTrainer(fabric, model, settings, dataset.num_classes, cohort_size=t.cohort_size)
    return ClientTrainer(fabric, model, settings, dataset.num_classes)


def check_model_fits(config: Config, model: torch.nn.Module, dataset: FederatedDataset) -> None:
    """One sample through the model on the CPU, so that a model made for other inputs fails here in one line.

    Raises:
        ConfigError: the forward pass fails or does not give one logit per class.
    """
    shape, t = tuple(dataset.input_shape), config.train
    sample = dataset.x_train[:1]  # as the trainer feeds it: token ids stay integers
    was_training = model.training
    model.eval()  # no batch-norm statistics updated, no dropout drawn from the global generator
    try:
        with torch.no_grad():
            out = model(sample)
        problem = "" if tuple(out.shape) == (1, dataset.num_classes) else \
            f"its output has shape {tuple(out.shape)}, not (1, {dataset.num_classes})"
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        problem = " ".join(str(e).split())[:200]
    finally:
        model.train(was_training)
    if problem:
        raise ConfigError(f"`train.model={t.model}` does not fit `data.dataset={config.data.dataset}` (inputs of "
                          f"shape {shape}, {dataset.num_classes} classes): {problem}. Pick another model "
                          "(csfl-fabric list models) or change `train.model_params`.")


def build_store(config: Config, fabric: Fabric, dataset: FederatedDataset, parts: Sequence[np.ndarray]) -> ClientStore:
    """The clients' data: the dataset's tensors held once, a client a slice of one index array."""
    d = config.data
    return ClientStore(dataset.x_train, dataset.y_train, parts, seed=config.seed, device=fabric.device,
                       loader=d.loader, num_workers=d.num_workers, max_cached_loaders=d.max_cached_loaders)


def build_loggers(config: Config, run_dir: Path) -> tuple[list[Any], str]:
    """The CSV logger and, unless disabled, the W&B logger; with the run's W&B id."""
    loggers: list[Any] = [CSVMetricsLogger(run_dir)]
    log = config.logging
    # One group per method (and sweep point) of a study: W&B's default view then averages a method's seeds.
    group = log.group or f"{config.experiment}/{config.selector.name}"
    tags = list(dict.fromkeys([config.experiment, *log.tags]))
    wandb = WandbLogger(log.wandb, log.project, run_dir, config=wandb_config(config), name=run_dir.name,
                        group=group, job_type=config.selector.name, tags=tags, run_id=(run_id := wandb_id(run_dir)))
    if wandb.mode != "disabled":
        loggers.append(wandb)
    return loggers, run_id


def wandb_config(config: Config) -> dict[str, Any]:
    """The resolved config as W&B shows it, under the names the user writes (``selector.import``, not ``module``)."""
    tree = to_dict(config)
    tree["selector"] = {("import" if k == "module" else k): v for k, v in tree["selector"].items()}
    return tree


def build_callbacks(config: Config, run_dir: Path) -> list[Any]:
    """The built-in callbacks, in the order they must run."""
    # First, so that its round-start state precedes anything other callbacks do in that round.
    callbacks: list[Any] = [Checkpoint(checkpoint_dir(run_dir), config.checkpoint.every_n_rounds,
                                       config.checkpoint.keep, meta={"config_hash": config_hash(config)}),
                            StudyMetrics()]
    if config.logging.progress:
        callbacks.append(RichProgress(f"{config.experiment} {run_name(config)}", every=config.logging.progress_every))
    return callbacks


def build_run(config: Config, run_dir: str | Path | None = None, callbacks: Sequence[Any] = ()) -> Run:
    """Build a ready-to-run `Run` from a validated config; nothing is written to disk yet.

    The steps, in order: data, callbacks and loggers, Fabric (launched), store, model and trainer, the
    memory policies and the config's callbacks (which may release the store's and trainer's caches), and
    the orchestrator.

    Args:
        config: a config from `csfl_fabric.config.load_config`.
        run_dir: where the run writes; default `default_run_dir` (`csfl_fabric.api` claims it before building).
        callbacks: extra callbacks, called after the built-in ones and the config's.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    seed_global_rngs(config.seed)  # before any plug-in is built: its constructor may draw already
    dataset, parts = build_dataset(config)
    all_callbacks = build_callbacks(config, run_dir)
    loggers, run_id = build_loggers(config, run_dir)
    # Loggers and the progress bar act on global rank 0 only, so every rank may build them. The orchestrator
    # dispatches the hooks itself (`HookDispatcher`), so the callbacks added below need not reach Fabric.
    fabric = build_fabric(config, all_callbacks, loggers)
    launch(fabric)
    torch.set_num_threads(config.train.num_threads)  # after launch, which sets its own thread count
    # NumPy's BLAS (selectors' matrix maths) gets the same thread count: with its default threads a selector's
    # 30 x 610 product took 4.8 ms a round on the loaded 2-core machine, 0.65 ms on one thread, same selections.
    threadpoolctl.threadpool_limits(config.train.num_threads, user_api="blas")
    store = build_store(config, fabric, dataset, parts)
    trainer = build_trainer(config, fabric, dataset)
    selector = _component("selector", SELECTORS, config.selector.name, config.selector.params)
    trainer.grad_stats = selector.needs_grad_stats  # the selector decides, not a config key
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
        selector=selector,
        selector_key=config.selector.name,
        aggregator=_component("aggregator", AGGREGATORS, config.aggregator.name, config.aggregator.params),
        global_params=global_params,
        test_data=(dataset.x_test.to(fabric.device), dataset.y_test.to(fabric.device)),
        rounds=RoundSettings(r.num_rounds, r.clients_per_round, r.eval_every, as_targets(r.target_accuracy)),
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

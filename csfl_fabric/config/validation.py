"""`validate`: value ranges, choices and component names, one clear error for the first problem."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from csfl_fabric.config.schema import CHOICES, Config, SystemsConfig
from csfl_fabric.errors import ConfigError, InvalidParamsError, UnknownNameError
from csfl_fabric.registry import (
    AGGREGATORS,
    CALLBACKS,
    DATASETS,
    MODELS,
    PARTITIONERS,
    SELECTORS,
    Registry,
    closest_first,
)


def validate(config: Config) -> None:
    """Check value ranges, choices and component names; raise one clear error for the first problem."""
    c = config
    _check_finite(c)
    _check_names(c)
    _at_least("seed", c.seed, 0)
    _at_least("data.num_clients", c.data.num_clients, 1)
    _at_least("rounds.num_rounds", c.rounds.num_rounds, 1)
    _at_least("rounds.eval_every", c.rounds.eval_every, 1)
    _at_least("train.local_epochs", c.train.local_epochs, 1)
    _at_least("train.batch_size", c.train.batch_size, 1)
    _at_least("train.eval_batch_size", c.train.eval_batch_size, 1)
    _at_least("train.num_threads", c.train.num_threads, 1)
    _at_least("train.cohort_size", c.train.cohort_size, 1)
    _at_least("train.native_conv_flops", c.train.native_conv_flops, 0)
    _at_least("fabric.devices", c.fabric.devices, 1)
    _at_least("fabric.num_nodes", c.fabric.num_nodes, 1)
    _at_least("memory.gc_every", c.memory.gc_every, 0)
    _at_least("memory.empty_cache_every", c.memory.empty_cache_every, 0)
    _at_least("data.num_workers", c.data.num_workers, 0)
    _at_least("data.max_cached_loaders", c.data.max_cached_loaders, 1)
    _at_least("checkpoint.every_n_rounds", c.checkpoint.every_n_rounds, 0)
    _at_least("checkpoint.keep", c.checkpoint.keep, 1)
    _at_least("compare.jobs", c.compare.jobs, 1)
    _at_least("launcher.slurm.gpus_per_job", c.launcher.slurm.gpus_per_job, 0)
    _at_least("launcher.slurm.cpus_per_job", c.launcher.slurm.cpus_per_job, 1)
    _at_least("launcher.slurm.array_parallelism", c.launcher.slurm.array_parallelism, 1)
    _at_least("logging.progress_every", c.logging.progress_every, 0)
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
    _validate_targets(c.rounds.target_accuracy)
    if not 0 < c.compare.target_fraction <= 1:
        raise ConfigError(f"Expected `compare.target_fraction` to be in (0, 1] but got {c.compare.target_fraction}.")
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
    for i, callback in enumerate(c.callbacks):
        if not callback.target:
            raise ConfigError(f"`callbacks[{i}].target` is empty: give a registered callback "
                              f"({', '.join(CALLBACKS.names())}) or `module:Class`.")
        _check_component(f"callbacks[{i}]", "target", CALLBACKS, callback.target, callback.params)


def _validate_targets(target: Any) -> None:
    values = target if isinstance(target, (list, tuple)) else [target]
    if target is None:
        return
    ok = len(values) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                                 for v in values)
    if not ok:
        raise ConfigError(f"Expected `rounds.target_accuracy` to be in (0, 1], a list of such values (e.g. "
                          f"[0.6,0.7]) or null but got {target!r}.")


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


def _check_finite(node: Any, prefix: str = "") -> None:
    """NaN passes every ``> 0`` check (all comparisons with it are false) and inf breaks arithmetic: refuse both.

    Every float of the schema must be finite; inside component ``params`` only NaN is refused (a component may
    give inf a meaning, e.g. no limit).
    """
    items = [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) \
        else list(node.items()) if isinstance(node, dict) else list(enumerate(node))
    in_params = isinstance(node, dict)
    for name, value in items:
        key = f"{prefix}[{name}]" if isinstance(name, int) else f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not in_params)):
            raise ConfigError(f"Expected `{key}` to be a finite number but got {value}.")
        if dataclasses.is_dataclass(value) or isinstance(value, (dict, list)):
            _check_finite(value, key)


def _check_names(c: Config) -> None:
    # Both become folder names under logging.dir: a path there would write the run somewhere else entirely.
    for key, value in (("experiment", c.experiment), ("logging.run_name", c.logging.run_name)):
        if value is not None and (value in ("", ".", "..") or any(ch in value for ch in "/\\\0") or
                                  value.startswith("~")):
            raise ConfigError(f"Expected `{key}` to be a plain folder name (no `/`, `..` or `~`; the run goes under "
                              f"logging.dir={c.logging.dir!r}) but got {value!r}.")
    if c.logging.wandb == "disabled":
        return
    # W&B's own rules, checked here so that a bad name stops the run before round 0, not at its first log.
    bad = sorted(set("/\\#?%:") & set(c.logging.project))
    if not c.logging.project or len(c.logging.project) > 128 or bad:
        raise ConfigError(f"Expected `logging.project` to be a W&B project name (1-128 characters, none of "
                          f"/ \\ # ? % :) but got {c.logging.project!r}.")
    for i, tag in enumerate(c.logging.tags):
        if not 1 <= len(str(tag)) <= 64:
            raise ConfigError(f"Expected `logging.tags[{i}]` to be a W&B tag of 1-64 characters but got "
                              f"{str(tag)!r} ({len(str(tag))} characters).")


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

"""A study is its config: the settings that make runs comparable, how two runs differ, and the study file.

A run's *settings* are its resolved config keys that change what it computes. Two runs may be pooled (as seeds
of one method) or paired (as methods of one seed) only when their settings agree apart from the method and the
seed; `compare` checks this before it reuses a run, and `report` names every key that differs in its labels.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from csfl_fabric.config import HASH_EXCLUDED, flatten, override_keys
from csfl_fabric.errors import ConfigError

#: Keys that do not change what a run computes: those a resume may change (`HASH_EXCLUDED`), except
#: ``rounds.num_rounds`` (a 5-round run is not a 10-round run), plus ``experiment`` (it names folders) and
#: the ``compare:`` block (it only plans runs).
NOT_SETTINGS: tuple[str, ...] = (*(k for k in HASH_EXCLUDED if k != "rounds.num_rounds"), "experiment", "compare")
#: What each run of a study has of its own: the method (its selector section) and the seed.
PER_RUN: tuple[str, ...] = ("selector", "seed")
#: The study's record in its comparison directory ``runs/<experiment>/``.
STUDY_FILE = "study.yaml"


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def settings(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config (a `to_dict` tree or a parsed config.yaml) without the keys of `NOT_SETTINGS`.

    >>> settings({"experiment": "x", "train": {"lr": 0.1}, "logging": {"dir": "runs"}, "rounds": {"num_rounds": 5}})
    {'train.lr': 0.1, 'rounds.num_rounds': 5}
    """
    return {k: v for k, v in flatten(tree).items() if not _under(k, NOT_SETTINGS)}


def shared_settings(run_settings: Mapping[str, Any], varied: Iterable[str] = ()) -> dict[str, Any]:
    """What every run of a study shares: ``run_settings`` without the method, the seed and the ``varied`` keys."""
    return {k: v for k, v in run_settings.items() if not _under(k, (*PER_RUN, *varied))}


def settings_hash(values: Mapping[str, Any]) -> str:
    """A short stable hash of settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(dict(values), sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing(mine: Mapping[str, Any], theirs: Mapping[str, Any], shared_only: bool = False) -> list[str]:
    """The keys whose values differ (a key on one side only counts, unless ``shared_only``).

    >>> differing({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}), differing({"a": 1}, {"a": 1, "c": 4}, shared_only=True)
    (['b', 'c'], [])
    """
    keys = set(mine) & set(theirs) if shared_only else set(mine) | set(theirs)
    return sorted(k for k in keys if mine.get(k, _ABSENT) != theirs.get(k, _ABSENT))


_ABSENT = object()


def describe(keys: Sequence[str], mine: Mapping[str, Any], theirs: Mapping[str, Any], limit: int = 4) -> str:
    """``key: here X, there Y`` for the first ``limit`` keys (and how many more).

    >>> describe(["train.lr", "seed"], {"train.lr": 0.05, "seed": 0}, {"train.lr": 0.5, "seed": 0})
    'train.lr (here 0.05, there 0.5), seed (here 0, there 0)'
    """
    parts = [f"{k} (here {_show(mine, k)}, there {_show(theirs, k)})" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more


def _show(values: Mapping[str, Any], key: str) -> str:
    return "unset" if key not in values else json.dumps(values[key], default=str)


def read_study(exp_dir: Path) -> dict[str, Any] | None:
    """The study file of a comparison directory (None if there is none)."""
    path = exp_dir / STUDY_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def write_study(exp_dir: Path, shared: Mapping[str, Any], varied: Sequence[str]) -> None:
    """Record the study's shared settings and the keys its sweep varies (``varied`` adds to those recorded)."""
    old = read_study(exp_dir) or {}
    varied = sorted({*old.get("varied", []), *varied})
    record = {"hash": settings_hash(shared_settings(shared, varied)), "varied": varied,
              "settings": shared_settings(shared, varied)}
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / STUDY_FILE).write_text("# The settings every run of this comparison shares (written by `compare`).\n"
                                      + yaml.safe_dump(record, sort_keys=False))


def run_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings of the run in ``run_dir`` (None if it has no config.yaml)."""
    path = run_dir / "config.yaml"
    return settings(yaml.safe_load(path.read_text())) if path.is_file() else None


def conflict(exp_dir: Path, shared: Mapping[str, Any], varied: Sequence[str],
             runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    """Why a comparison cannot use ``exp_dir`` (None if it can).

    Args:
        exp_dir: the comparison directory.
        shared: the settings of the comparison's base config.
        varied: the keys its sweep varies.
        runs: each run's directory name and settings.
    """
    study = read_study(exp_dir)
    if study is not None:
        ours = shared_settings(shared, [*varied, *study.get("varied", [])])
        keys = differing(ours, study.get("settings", {}), shared_only=True)
        if keys:
            return f"`{exp_dir}` holds a study made with other settings: {describe(keys, ours, study['settings'])}"
    for name, mine in runs:
        theirs = run_settings(exp_dir / name)
        keys = differing(mine, theirs) if theirs is not None else []
        if theirs is not None and keys:
            return f"`{exp_dir / name}` was run with other settings: {describe(keys, mine, theirs)}"
    return None


def label_variants(records: Sequence[Any]) -> list[str]:
    """Extend each record's ``point`` with every setting that differs between the records; return those keys.

    Records are objects with ``method``, ``point`` (the sweep point, ``key=value ...``) and ``settings``. Keys
    under ``selector`` count only between runs of the same method (methods differ in them by nature), the seed
    never, and a key that a record's own sweep point sets is not repeated.
    """
    keys = _varying([r for r in records if r.settings], exclude=("seed", "selector"))
    for method in {r.method for r in records}:
        keys |= _varying([r for r in records if r.settings and r.method == method], exclude=("seed",))
    ordered = sorted(keys)
    for r in records:
        named = set(override_keys(r.point.split()))
        extra = [f"{k}={_show(r.settings, k).strip(chr(34))}" for k in ordered if k in r.settings and k not in named]
        r.point = " ".join([r.point, *extra]).strip()
    return ordered


def _varying(records: Sequence[Any], exclude: Sequence[str]) -> set[str]:
    keys = {k for r in records for k in r.settings if not _under(k, exclude)}
    return {k for k in keys if len({_show(r.settings, k) for r in records}) > 1}


def claim_study(root: Path, experiment: str, shared: Mapping[str, Any], varied: Sequence[str],
                runs: Sequence[tuple[str, Mapping[str, Any]]], new_study: bool = False) -> str:
    """The experiment (folder under ``root``) a comparison may write to, its study file written.

    ``root/experiment`` when it is new or holds the same study (its study file and every run the comparison
    would reuse have the comparison's settings). Otherwise, with ``new_study``, the first ``experiment-<n>``
    (n = 2, 3, ...) that is new or holds this same study, so that rerunning the command continues it.

    Raises:
        ConfigError: ``root/experiment`` holds other settings and ``new_study`` is not set; the one-line message
            names the differing keys.
    """
    why = conflict(root / experiment, shared, varied, runs)
    name = experiment
    if why is not None:
        name = next(f"{experiment}-{n}" for n in itertools.count(2)
                    if conflict(root / f"{experiment}-{n}", shared, varied, runs) is None)
        if not new_study:
            raise ConfigError(f"{why}. A comparison reuses only runs made with its own settings: pass --new-study "
                              f"(Python: new_study=True) to write it to `{root / name}`, or set another `experiment`.")
    write_study(root / name, shared, varied)
    return name

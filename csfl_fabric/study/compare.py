"""Comparisons: methods x seeds (x sweep points), paired by seed, resumable, then a report.

Every run of one seed shares the partition, the data order and the initial model, because those are drawn
from named streams of the seed alone (`csfl_fabric.build.stream`); only the selector differs. Runs go to
fixed directories ``runs/<experiment>/<method>[-<key>=<value>...]-seed<k>/``, so rerunning the same
comparison skips finished runs and redoes (or resumes) unfinished ones; a directory made with other settings is
never reused (`csfl_fabric.study.settings.claim_study`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csfl_fabric.config import Config, LauncherConfig, load_config, override_keys, to_dict
from csfl_fabric.errors import ConfigError
from csfl_fabric.extras import require
from csfl_fabric.study.launch import (
    Job,
    StudyOutcome,
    failure_line,
    launch_settings,
    run_local,
    run_subprocess,
)
from csfl_fabric.study.settings import claim_study, settings

if TYPE_CHECKING:
    from csfl_fabric.study.records import Report


@dataclass(frozen=True)
class RunSpec:
    """One run of a comparison.

    Attributes:
        method: the selector's registry key.
        seed: the run's seed (pairs runs across methods).
        point: the sweep assignments of this run as ``key=value`` strings (empty without a sweep).
        run_dir: the run's fixed directory.
        config: the run's resolved config.
    """

    method: str
    seed: int
    point: tuple[str, ...]
    run_dir: Path
    config: Config = field(compare=False, repr=False)


@dataclass
class ComparisonResult:
    """What `compare` did: each run with what happened to it (``ran``, ``skipped``, ``resumed``, ``restarted``).

    With ``jobs > 1`` or SLURM a run may also be ``failed`` (the others went on) or ``submitted`` (``wait=False``);
    ``study`` has the failures, their logs and the study's peak memory. ``report`` is None until a run succeeded
    and the study was waited for.
    """

    experiment_dir: Path
    runs: list[tuple[RunSpec, str]]
    report: Report | None
    study: StudyOutcome = field(default_factory=StudyOutcome)


def cleanup_between_runs() -> None:
    """Free what the previous run left behind before the next one starts in the same process."""
    from csfl_callbacks.memory import release_memory  # torch: only once runs are made

    release_memory()


def can_resume(run_dir: Path) -> bool:
    """Whether an unfinished run can continue: the config has ``resume`` and the run left a checkpoint.

    Otherwise the run restarts from scratch in the same directory.
    """
    has_key = "resume" in {f.name for f in dataclasses.fields(Config)}
    return has_key and any((run_dir / "checkpoints").glob("*"))


def parse_sweep(items: Sequence[str]) -> dict[str, list[str]]:
    """Parse ``key=v1,v2`` strings into ``{key: [v1, v2]}``.

    >>> parse_sweep(["train.lr=0.01,0.05", "seed=1"])
    {'train.lr': ['0.01', '0.05'], 'seed': ['1']}
    """
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"Sweep `{item}` is not of the form key=v1,v2 (e.g. train.lr=0.01,0.05).")
        out[key] = values.split(",")
    return out


def plan(
    config: str | Path | Mapping[str, Any] | Config,
    overrides: Sequence[str] = (),
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    sweep: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[Config, list[RunSpec]]:
    """Resolve every run of a comparison (validating each config before anything runs).

    Arguments given here win over the config's ``compare:`` block; without methods the config's selector is
    the only method. Returns the base config and the runs, sweep point by sweep point, seed by seed.
    """
    source = to_dict(config) if isinstance(config, Config) else config
    base = load_config(source, overrides)
    _check_list("--methods", methods)
    _check_list("compare.methods", base.compare.methods)
    _check_list("--seeds", seeds)
    methods = list(methods or base.compare.methods or [base.selector.name])
    seeds = list(seeds if seeds is not None else base.compare.seeds)
    grid = {**base.compare.sweep, **(sweep or {})}
    if not seeds:
        raise ConfigError("Expected at least one seed in `compare.seeds` (or --seeds) but got none.")
    exp_dir = Path(base.logging.dir) / base.experiment
    points = [tuple(f"{k}={v}" for k, v in zip(grid, vs, strict=True)) for vs in itertools.product(*grid.values())]
    specs = []
    for point, seed, method in itertools.product(points, seeds, methods):
        cfg = load_config(source, [*overrides, *point, f"selector.name={method}", f"seed={seed}"])
        name = "-".join([method, *point, f"seed{seed}"])
        cfg.logging.run_name = name
        cfg.logging.tags = [method, f"seed{seed}", *point]
        cfg.logging.group = "/".join([base.experiment, " ".join([method, *point])])  # a W&B line per variant
        specs.append(RunSpec(method=method, seed=seed, point=point, run_dir=exp_dir / name, config=cfg))
    return base, specs


def _check_list(key: str, values: Sequence[Any] | None) -> None:
    # A repeated method would count as extra seeds of that method; an empty --methods (`--methods ,`) would
    # silently fall back to the config's selector.
    if values is None:
        return
    if key.startswith("--") and not values:
        raise ConfigError(f"`{key}` is empty; give a comma-separated list (e.g. --methods "
                          "heuristic.random,heuristic.pow_d or --seeds 0,1,2).")
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError(f"`{key}` lists {', '.join(f'`{v}`' for v in repeated)} more than once; give each once.")


def run_status(run_dir: Path) -> str:
    """``success`` (summary.json says so), ``unfinished`` (a non-empty directory) or ``new``."""
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "success":
        return "success"
    return "unfinished" if run_dir.exists() and any(run_dir.iterdir()) else "new"


def compare(
    config: str | Path | Mapping[str, Any] | Config,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    sweep: Mapping[str, Sequence[Any]] | None = None,
    isolate: bool | None = None,
    baseline: str | None = None,
    test: str | None = None,
    fmt: str | None = None,
    jobs: int | None = None,
    launcher: str | None = None,
    slurm: Mapping[str, Any] | None = None,
    wait: bool | None = None,
    new_study: bool = False,
) -> ComparisonResult:
    """Run every method x seed (x sweep point) on paired data, then write the report.

    Args:
        config: a YAML path, a nested dict or a `Config`; its ``compare:`` block gives defaults.
        methods: selector keys; default ``compare.methods``, else the config's selector.
        seeds: default ``compare.seeds``.
        overrides: ``key=value`` strings applied to every run.
        sweep: ``{key: [values]}``; the cartesian product of the values, each point its own run directories.
        isolate: run each in its own subprocess (only registered selectors exist there); default ``compare.isolate``.
        baseline: the method the others are tested against; default ``compare.baseline``, else the first method.
        test: ``ttest`` or ``wilcoxon`` (paired over seeds, Holm-corrected); default ``compare.test``.
        fmt: plot format ``png``, ``pdf`` or ``svg``; default ``compare.format``.
        jobs: runs at once, each in its own process; default ``compare.jobs`` (1: one after another, in this process).
        launcher: ``local``, ``slurm`` or ``submitit-local``; default ``launcher.name`` (`csfl_fabric.study.launch`).
        slurm: ``launcher.slurm`` keys (``partition``, ``time``, ``gpus_per_job``, ``cpus_per_job``, ``mem``, ...).
        wait: wait for SLURM jobs (default ``launcher.wait``); False returns once they are submitted.
        new_study: when ``runs/<experiment>`` holds runs with other settings, write to ``runs/<experiment>-<n>``
            instead of refusing.

    A study is its config: ``runs/<experiment>/study.yaml`` records the settings every run shares, and a run
    directory is reused only when its config has this comparison's settings (`csfl_fabric.study.settings`).
    Finished runs (``summary.json`` with status ``success``) are skipped; unfinished ones resume from their
    checkpoint when checkpoints exist (``resume=auto``) and otherwise restart in the same directory. A run
    that fails stops the comparison; rerunning it continues from there. With ``jobs > 1`` or SLURM a failed run
    does not stop the others, and rerunning the same comparison redoes only the unfinished ones.

    Raises:
        ConfigError: a bad config, override, sweep or baseline, or a directory with other settings, before any
            run starts.
        MissingExtraError: the ``report`` extra (matplotlib, scipy) is not installed.
    """
    require("report", "`compare` (its report: plots and statistics)")  # before the runs, not after them
    base, specs = plan(config, overrides, methods, seeds, sweep)
    c = base.compare
    baseline = baseline or c.baseline or specs[0].method
    if baseline not in {s.method for s in specs}:
        # Checked before the runs, not after hours of them.
        raise ConfigError(f"Expected the baseline to be one of the methods {sorted({s.method for s in specs})} "
                          f"but got `{baseline}`.")
    n, launch_cfg = launch_settings(base, jobs, launcher, slurm, wait)  # checked before anything is written
    varied = override_keys(specs[0].point)
    experiment = claim_study(Path(base.logging.dir), base.experiment, settings(to_dict(base)), varied,
                             [(s.run_dir.name, settings(to_dict(s.config))) for s in specs], new_study)
    if experiment != base.experiment:
        base, specs = plan(config, [*overrides, f"experiment={experiment}"], methods, seeds, sweep)
    isolate = c.isolate if isolate is None else isolate
    queued: list[Job] = []  # with n > 1 or SLURM the runs are launched together, after the loop
    done: list[tuple[RunSpec, str]] = []
    for spec in specs:
        status = run_status(spec.run_dir)
        if status == "success":
            done.append((spec, "skipped"))
            continue
        cfg = spec.config
        resumable = status == "unfinished" and can_resume(spec.run_dir)
        if resumable:
            cfg = dataclasses.replace(cfg, resume="auto")  # type: ignore[call-arg]
        elif status == "unfinished":
            shutil.rmtree(spec.run_dir)
        done.append((spec, "resumed" if resumable else {"new": "ran", "unfinished": "restarted"}[status]))
        if n > 1 or launch_cfg.name != "local":
            queued.append(Job(spec.run_dir, cfg, done[-1][1]))
        elif isolate:
            _run_isolated(cfg, spec.run_dir)
        else:
            _run_in_process(cfg, spec.run_dir)
    from csfl_fabric.study.report import build_report  # matplotlib, scipy: only once there is a report to make

    exp_dir = Path(base.logging.dir) / base.experiment
    study = _launch(queued, n, launch_cfg, exp_dir)
    states = {j.run_dir: j.state for j in study.jobs}
    done = [(s, {"failed": "failed", "queued": "submitted", "running": "submitted"}.get(states.get(s.run_dir, ""), a))
            for s, a in done]
    report = None
    if study.waited and any(run_status(s.run_dir) == "success" for s in specs):
        report = build_report(exp_dir, baseline=baseline, test=test or c.test, fmt=fmt or c.format,
                              only=[s.run_dir for s in specs], target_fraction=c.target_fraction)
    return ComparisonResult(experiment_dir=exp_dir, runs=done, report=report, study=study)


def _launch(queued: list[Job], n: int, launcher: LauncherConfig, exp_dir: Path) -> StudyOutcome:
    if not queued:
        return StudyOutcome()
    if launcher.name == "local":
        return run_local(queued, n, exp_dir)
    from csfl_fabric.study.slurm import submit_study  # needs the optional extra [slurm] (submitit)

    return submit_study(queued, launcher, exp_dir)


def _run_in_process(cfg: Config, run_dir: Path) -> None:
    from csfl_fabric.api import run

    try:
        run(cfg, run_dir=run_dir)
    finally:
        cleanup_between_runs()


def _run_isolated(cfg: Config, run_dir: Path) -> None:
    log = run_dir.parent / ".compare" / "logs" / f"{run_dir.name}.log"
    code = run_subprocess(cfg, run_dir, log)
    if code != 0:
        raise RuntimeError(f"Run `{run_dir.name}` failed in its subprocess ({failure_line(code, log)}); log: {log}")

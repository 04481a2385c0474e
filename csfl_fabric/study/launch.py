"""Launching a study's runs: N at once on this machine (``--jobs N``), or as a SLURM job array (``--launcher slurm``).

Locally each run gets a process of its own (`job_main`), started from a thread pool of N threads: a fresh
process per run releases everything when the run ends, and one killed by the OOM killer fails only its own run.
(A `ProcessPoolExecutor` would have been the obvious tool, but one worker killed abruptly breaks the whole
pool and fails every run still in it: ``BrokenProcessPool``.) Each job gets its share of the cores and, with
GPUs, its own device. SLURM goes through submitit (`csfl_fabric.study.slurm`, the optional extra ``[slurm]``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import multiprocessing
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from csfl_callbacks.accounting import process_memory
from rich.console import Console

from csfl_fabric.config import Config, LauncherConfig, load_config, to_yaml
from csfl_fabric.errors import ConfigError
from csfl_fabric.study.progress import JobStatus, StudyView


@dataclass
class Job:
    """One run handed to a launcher: its directory, resolved config and what the study does with it."""

    run_dir: Path
    config: Config
    action: str


@dataclass
class StudyOutcome:
    """What the launcher did with the study's runs.

    Attributes:
        jobs: every launched run with its final state (``done``, ``failed``, or ``running`` when not waited for).
        peak_memory: the peak PSS of this process tree while local jobs ran, in bytes (None for SLURM jobs).
        waited: False after ``--no-wait``: the jobs were only submitted.
        note: what a user needs to know afterwards (the job array's id and log folder).
    """

    jobs: list[JobStatus] = field(default_factory=list)
    peak_memory: int | None = None
    waited: bool = True
    note: str = ""

    @property
    def failed(self) -> list[JobStatus]:
        """The runs that failed."""
        return [j for j in self.jobs if j.state == "failed"]


def launch_settings(base: Config, jobs: int | None = None, launcher: str | None = None,
                    slurm: Mapping[str, Any] | None = None, wait: bool | None = None) -> tuple[int, LauncherConfig]:
    """The study's ``compare.jobs`` and ``launcher`` block with the given arguments applied (validated as config keys).

    Raises:
        ConfigError: a bad value (``--jobs 0``, an unknown launcher), or SLURM without submitit or ``sbatch``.
    """
    overrides = [f"compare.jobs={jobs}"] if jobs is not None else []
    overrides += [f"launcher.name={launcher}"] if launcher is not None else []
    overrides += [f"launcher.wait={wait}"] if wait is not None else []
    # Strings are quoted: YAML would read an unquoted 2:00:00 as the number 7200 (base 60).
    overrides += [f"launcher.slurm.{k}={json.dumps(v) if isinstance(v, str) else v}"
                  for k, v in (slurm or {}).items() if v is not None]
    cfg = load_config(yaml.safe_load(to_yaml(base)), overrides) if overrides else base
    name = cfg.launcher.name
    if name != "local":  # checked now, not after the study's runs have been prepared
        timeout_minutes(cfg.launcher.slurm.time)
        if importlib.util.find_spec("submitit") is None:
            raise ConfigError(f"`launcher.name` is '{name}', which needs submitit: pip install 'csfl_fabric[slurm]'.")
    if name == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("`launcher.name` is 'slurm' but `sbatch` is not on PATH: run the study on a SLURM login "
                          "node, or use --launcher submitit-local (the same jobs on this machine) or local.")
    return cfg.compare.jobs, cfg.launcher


def run_local(jobs: Sequence[Job], n: int, exp_dir: Path, console: Console | None = None) -> StudyOutcome:
    """Run ``jobs``, ``n`` at once, each in its own process; a failed run does not stop the others.

    Each job's ``train.num_threads`` is capped at its share of the cores (`job_threads`). With CUDA devices
    visible, each of the ``n`` slots gets one device, round robin over ``CUDA_VISIBLE_DEVICES``. A job's output
    goes to ``<experiment>/.compare/logs/<run>.log``.
    """
    statuses = [JobStatus(j.run_dir.name, j.run_dir, j.config.rounds.num_rounds, j.action,
                          log=exp_dir / ".compare" / "logs" / f"{j.run_dir.name}.log") for j in jobs]
    devices = cuda_devices()
    slots: queue.Queue[str | None] = queue.Queue()
    for i in range(n):  # a slot is a device token: a job holds one while it runs, so no device runs two jobs
        slots.put(devices[i % len(devices)] if devices else None)
    ctx = _job_context()
    procs: dict[str, Any] = {}
    threads = [job_threads(j.config.train.num_threads, n) for j in jobs]

    def one(job: Job, status: JobStatus, threads: int) -> None:
        device = slots.get()
        try:
            status.state, status.where = "running", f"cuda:{device}" if device is not None else ""
            config = yaml.safe_load(to_yaml(job.config))  # plain data: the child validates it again
            proc = ctx.Process(target=job_main, args=(config, str(job.run_dir), str(status.log), threads, device),
                               name=f"csfl-{status.name}")
            proc.start()
            procs[status.name] = proc
            proc.join()
            status.state = "done" if proc.exitcode == 0 else "failed"
            status.error = "" if proc.exitcode == 0 else failure_line(proc.exitcode, status.log)
        finally:
            procs.pop(status.name, None)
            slots.put(device)

    with PeakMemory() as memory, ThreadPoolExecutor(n) as pool, StudyView(exp_dir.name, statuses, console) as view:
        futures = [pool.submit(one, *args) for args in zip(jobs, statuses, threads, strict=True)]
        try:
            while wait(futures, timeout=1.0).not_done:
                view.refresh()
        except KeyboardInterrupt:
            # The runs are in their own sessions (Ctrl-C reaches only this process): send each one SIGINT, so
            # that it checkpoints; queued runs never start. A second Ctrl-C sends a second SIGINT: it stops them.
            for f in futures:
                f.cancel()
            for attempt in (1, 2):
                for proc in list(procs.values()):
                    os.kill(proc.pid, signal.SIGINT)
                try:
                    wait(futures)
                    break
                except KeyboardInterrupt:
                    if attempt == 2:
                        raise
            raise
        for f in futures:
            f.result()  # a bug in `one` itself surfaces here
    return StudyOutcome(statuses, peak_memory=memory.peak)


def job_main(config: Mapping[str, Any], run_dir: str, log: str, threads: int, device: str | None) -> None:
    """The body of one local job's process: run one run, its output appended to ``log``.

    A failure raises, so the process exits with code 1 and the traceback lands in the log.
    """
    os.setsid()  # its own session: a Ctrl-C in the terminal reaches the study, which forwards it once
    # The objects inherited from the server (the imported modules) live as long as the process: collections need
    # not scan them, which makes each one faster and keeps their pages shared instead of copied (Python's gc docs).
    gc.freeze()
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:  # file descriptors, so that C code and the run's progress bar write there too
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before CUDA initialises in this process
    from csfl_fabric.api import run

    cfg = load_config(config)
    cfg.train.num_threads = min(cfg.train.num_threads, threads)
    print(f"csfl-fabric: pid {os.getpid()}, {cfg.train.num_threads} threads, CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}: {run_dir}", flush=True)
    run(cfg, run_dir=run_dir)


def _job_context() -> Any:
    # Each run gets a fresh process, forked from a server that has imported torch and Lightning once: ~0.1 s to
    # start instead of the ~10 s of those imports in every run's process (the pages they fill stay shared, so
    # the study's PSS is lower too). The server imports nothing else and starts no threads, so forking it is
    # safe; CUDA initialises in each run's own process. Without forkserver (Windows), processes are spawned.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["csfl_fabric.api"])
    return ctx


def run_subprocess(config: Config, run_dir: Path, log: Path | None = None) -> int:
    """Run one config as ``python -m csfl_fabric run`` in a fresh process; return its exit code.

    The resolved config travels as a YAML file, so the child gets the exact same `Config` back (and imports its
    plugins). Output goes to ``log`` (appended) or nowhere.
    """
    spec_dir = run_dir.parent / ".compare"
    spec_dir.mkdir(parents=True, exist_ok=True)
    path = spec_dir / f"{run_dir.name}.yaml"
    path.write_text(to_yaml(config))
    cmd = [sys.executable, "-m", "csfl_fabric", "run", str(path), "--run-dir", str(run_dir)]
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.wait()  # the child got the same Ctrl-C: let it write its checkpoint (a second Ctrl-C stops it)
            raise


def job_threads(num_threads: int, jobs: int, cores: int | None = None) -> int:
    """Threads per job so that ``jobs`` x threads stays within the cores (at least one, at most ``num_threads``).

    >>> job_threads(4, jobs=2, cores=4), job_threads(1, jobs=8, cores=2), job_threads(8, jobs=3, cores=16)
    (2, 1, 5)
    """
    cores = cores or usable_cores()
    return max(1, min(num_threads, cores // jobs))


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a SLURM allocation or a cpuset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cuda_devices() -> list[str]:
    """The CUDA devices jobs may use: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees (none on CPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    import torch  # counting devices does not initialise CUDA in this process

    return [str(i) for i in range(torch.cuda.device_count())]


def timeout_minutes(text: str) -> int:
    """SLURM's time limit in minutes: ``90``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``.

    >>> timeout_minutes("90"), timeout_minutes("2:00:00"), timeout_minutes("1-00:30:00"), timeout_minutes("10:30")
    (90, 120, 1470, 11)
    """
    days, _, clock = str(text).strip().rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        if len(parts) > 3 or any(p < 0 for p in parts) or (days and int(days) < 0):
            raise ValueError
    except ValueError:
        raise ConfigError(f"Expected `launcher.slurm.time` to be minutes or [D-]HH:MM:SS (e.g. 90, 2:00:00) "
                          f"but got {text!r}.") from None
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts))) if len(parts) > 1 else parts[0] * 60
    total = int(days or 0) * 24 * 60 + -(-seconds // 60)
    if total < 1:
        raise ConfigError(f"Expected `launcher.slurm.time` to be at least one minute but got {text!r}.")
    return total


def failure_line(code: int, log: Path | None) -> str:
    """Why a run's process failed: its exit code or signal, and the last line of its log."""
    reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    if code == -signal.SIGKILL:
        reason += " (out of memory?)"
    lines = log.read_text(errors="replace").strip().splitlines() if log is not None and log.exists() else []
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return f"{reason}: {last}" if last else reason


class PeakMemory:
    """The peak of `process_memory` (PSS of this process and its descendants), sampled in a background thread.

    Reading PSS costs 20-60 ms a process, so the sampler waits at least 20 times as long as its last reading took
    (at most ~5% of a core) and never less than ``interval_s``; a short spike between samples can be missed.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="csfl-peak-memory", daemon=True)

    def __enter__(self) -> PeakMemory:
        """Start sampling (one sample at once)."""
        self.peak = process_memory()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling; ``peak`` is the peak in bytes."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, process_memory())

    def _sample(self) -> None:
        pause = self.interval_s
        while not self._stop.wait(pause):
            started = time.perf_counter()
            self.peak = max(self.peak, process_memory())
            pause = max(self.interval_s, 20 * (time.perf_counter() - started))


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--jobs``, ``--launcher``, ``--slurm.*`` and ``--no-wait`` to ``compare``."""
    group = parser.add_argument_group("running the study", "README: Running studies at scale")
    group.add_argument("--jobs", type=int, help="runs at once, each in its own process (default: compare.jobs, 1)")
    group.add_argument("--launcher", choices=["local", "slurm", "submitit-local"],
                       help="where the runs go (default: launcher.name, local); submitit-local tries the SLURM path "
                       "on this machine")
    for key, kind, text in (("partition", str, "SLURM partition"), ("time", str, "time limit per job: minutes or "
                            "[D-]HH:MM:SS"), ("gpus_per_job", int, "GPUs per job"), ("cpus_per_job", int,
                            "CPUs per job"), ("mem", str, "memory per job, e.g. 16G")):
        group.add_argument(f"--slurm.{key}", dest=f"slurm_{key}", type=kind, help=text)
    group.add_argument("--no-wait", dest="wait", action="store_false", default=None,
                       help="return once the SLURM jobs are submitted; `csfl-fabric report` collects the results")


def cli_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`compare` keyword arguments from the options of `add_cli_options`."""
    slurm = {k: getattr(args, f"slurm_{k}") for k in ("partition", "time", "gpus_per_job", "cpus_per_job", "mem")}
    return {"jobs": args.jobs, "launcher": args.launcher, "slurm": slurm, "wait": args.wait}


def print_outcome(study: StudyOutcome, exp_dir: Path, console: Console) -> int:
    """Print the study's failures (with logs), its memory and how to go on; return the CLI's exit code (1: failures)."""
    if study.note:
        console.print(f"Study: {study.note}", soft_wrap=True)
    if study.peak_memory:
        console.print(f"Study peak memory (PSS of the process tree): {study.peak_memory / 2**30:.2f} GiB")
    if not study.waited:
        console.print(f"Submitted; collect the results with: csfl-fabric report {exp_dir}", soft_wrap=True)
        return 0
    for job in study.failed:
        console.print(f"[red]failed[/red]  {job.name}: {job.error}\n          log: {job.log}", soft_wrap=True)
    if study.failed:
        console.print(f"{len(study.failed)} of {len(study.jobs)} runs failed. To re-run only those, run the same "
                      "command again: finished runs are skipped, failed ones resume from their checkpoint or start "
                      "again.", soft_wrap=True)
    return 1 if study.failed else 0

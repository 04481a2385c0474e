"""A study as a submitit job array: SLURM (``--launcher slurm``) or submitit's LocalExecutor (``submitit-local``).

Each job is a `StudyRun`, a `submitit.helpers.Checkpointable`: when SLURM preempts it or its time runs out, SLURM
sends the preemption signal (USR2); the run stops at the next client boundary and writes its checkpoint, then
submitit pickles the job's `checkpoint` (this run, marked requeued) and requeues it, and the requeued job resumes
from the checkpoint (``resume: auto``) and ends bit-identical to a run that was never stopped.

Needs the optional extra ``pip install "csfl_fabric[slurm]"`` (submitit).
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import submitit
import yaml
from rich.console import Console
from submitit.helpers import Checkpointable, DelayedSubmission

from csfl_fabric.config import LauncherConfig, to_yaml
from csfl_fabric.errors import RunInterrupted
from csfl_fabric.study.launch import Job, StudyOutcome, timeout_minutes
from csfl_fabric.study.progress import JobStatus, StudyView

#: The signal SLURM (through submitit's ``--signal``) and the LocalExecutor send before preempting a job.
PREEMPT_SIGNAL = signal.SIGUSR2


class StopOnPreemption:
    """A callback: while the run is inside its round loop, the preemption signal asks it to stop and checkpoint.

    Outside the loop (while building, after the end) submitit's own handler acts: it requeues at once, and the
    requeued job restarts or resumes from whatever checkpoint there is.
    """

    def __init__(self) -> None:
        self._previous: Any = None

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Install the handler (submitit's own is kept, to be called once the checkpoint is written)."""
        guard = orchestrator.guard

        def handler(signum: int, frame: FrameType | None) -> None:
            guard.request_stop(signum)

        self._previous = signal.signal(PREEMPT_SIGNAL, handler)

    def on_run_end(self) -> None:
        """Put submitit's handler back."""
        if self._previous is not None:
            signal.signal(PREEMPT_SIGNAL, self._previous)


class StudyRun(Checkpointable):
    """One run of a study as a submitit job; calling it runs the run in the job's process.

    Args:
        config: the run's resolved config as a nested dict (its plugins are imported again in the job).
        run_dir: the run's fixed directory (on a file system the cluster's nodes share).
        requeued: set on the copy that submitit requeues (shown in its log). Every start, requeued or not, resumes
            the run's checkpoint if there is one and otherwise starts the run afresh.
    """

    def __init__(self, config: Mapping[str, Any], run_dir: str, requeued: bool = False) -> None:
        self.config = dict(config)
        self.run_dir = run_dir
        self.requeued = requeued

    def __call__(self) -> str:
        """Run (or resume) the run; return ``ran``, ``resumed`` or ``restarted``."""
        from csfl_fabric.api import run
        from csfl_fabric.config import load_config
        from csfl_fabric.engine.resume import latest_checkpoint

        cfg = load_config(self.config)
        # Decided from the disk, not from how the job was started: a job that SLURM restarts by itself (a node
        # failure, PreemptMode=REQUEUE) gets the original pickle, not the one `checkpoint` returned.
        action = "ran"
        if latest_checkpoint(self.run_dir) is not None:
            action, cfg.resume = "resumed", "auto"
        elif Path(self.run_dir).exists() and any(Path(self.run_dir).iterdir()):
            action = "restarted"
            shutil.rmtree(self.run_dir)  # stopped before its first checkpoint
        print(f"csfl-fabric: {action} {self.run_dir}" + (" (requeued)" if self.requeued else ""), flush=True)
        submitit_handler = signal.getsignal(PREEMPT_SIGNAL)
        try:
            run(cfg, run_dir=self.run_dir, callbacks=[StopOnPreemption()])
        except RunInterrupted as e:
            if e.signum == PREEMPT_SIGNAL and callable(submitit_handler):
                submitit_handler(e.signum, None)  # the checkpoint is written: let submitit requeue (it exits)
            raise
        return action

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """What submitit requeues: this run, marked so that it resumes from its checkpoint."""
        return DelayedSubmission(StudyRun(self.config, self.run_dir, requeued=True))


def executor(launcher: LauncherConfig, folder: Path, name: str) -> submitit.AutoExecutor:
    """A submitit executor with the launcher's resources (``submitit-local``: the LocalExecutor on this machine)."""
    cluster = "local" if launcher.name == "submitit-local" else "slurm"
    s = launcher.slurm
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"name": name, "timeout_min": timeout_minutes(s.time), "nodes": 1, "tasks_per_node": 1,
                              "cpus_per_task": s.cpus_per_job, "gpus_per_node": s.gpus_per_job,
                              "slurm_array_parallelism": s.array_parallelism, "slurm_setup": list(s.setup)}
    params.update({f"slurm_{k}": v for k, v in (("partition", s.partition), ("mem", s.mem)) if v is not None})
    if s.extra:
        params["slurm_additional_parameters"] = dict(s.extra)
    ex.update_parameters(**params)
    return ex


def submit_study(jobs: Sequence[Job], launcher: LauncherConfig, exp_dir: Path,
                 console: Console | None = None) -> StudyOutcome:
    """Submit ``jobs`` as one job array; with ``launcher.wait`` wait for them, showing the live view."""
    folder = exp_dir / ".compare" / "submitit"
    ex = executor(launcher, folder, exp_dir.name)
    with ex.batch():  # one sbatch call: a job array
        handles = [ex.submit(StudyRun(yaml.safe_load(to_yaml(j.config)), str(j.run_dir))) for j in jobs]
    statuses = [JobStatus(j.run_dir.name, j.run_dir, j.config.rounds.num_rounds, j.action, state="queued",
                          where=h.job_id, log=Path(h.paths.stdout)) for j, h in zip(jobs, handles, strict=True)]
    array = handles[0].job_id.split("_")[0] if handles else ""
    note = f"job array {array} ({len(handles)} jobs), submitit logs in {folder}"
    if not launcher.wait:
        return StudyOutcome(statuses, waited=False, note=note)
    with StudyView(exp_dir.name, statuses, console) as view:
        while not all(_poll(h, s) for h, s in zip(handles, statuses, strict=True)):
            view.refresh()
            time.sleep(2.0)  # SLURM's accounting is asked at most every few seconds (submitit caches it too)
    return StudyOutcome(statuses, note=note)


def _poll(handle: submitit.Job[Any], status: JobStatus) -> bool:
    # True once the job is over, with its state recorded; a requeued job counts as running.
    if not handle.done():
        status.state = "running" if handle.state in ("RUNNING", "COMPLETING") else status.state
        if status.state == "queued" and (status.run_dir / "metrics.csv").exists():
            status.state = "running"  # the local executor reports no queue state
        return False
    error = handle.exception()
    status.state = "done" if error is None else "failed"
    if error is not None:
        lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
        status.error = lines[-1].strip() if lines else type(error).__name__
        status.log = Path(handle.paths.stderr)
    return True

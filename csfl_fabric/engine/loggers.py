"""The run directory, the per-round CSV files and the W&B logger (Fabric's `Logger` interface)."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from typing_extensions import override

from csfl_fabric.engine.fabric import Logger, rank_zero_only
from csfl_fabric.engine.files import atomic_open, atomic_write
from csfl_fabric.engine.resume import WANDB_ID_FILE
from csfl_fabric.state import Selection

#: Columns that differ between identical runs (wall-clock times, memory readings) go to side files by key
#: prefix, so that metrics.csv stays byte-identical for the same config and seed. W&B gets every column.
WALL_PREFIX = "time/wall"
MEMORY_PREFIX = "mem/"
SIDE_FILES: dict[str, tuple[str, ...]] = {"timing.csv": (WALL_PREFIX,), "system.csv": (MEMORY_PREFIX,)}
F = TypeVar("F", bound=Callable[..., Any])
#: The simulated clock's column, and the W&B key prefix of metrics plotted against it.
SIM_TIME = "time/sim_total_s"
BY_SIM_TIME = "by_sim_time"
#: The W&B selection table: its file under ``<run_dir>/wandb/`` and its columns.
SELECTION_TABLE = "selection_table.csv"
SELECTION_COLUMNS = ("round", "client_id", "score", "prob", "sim_duration_s", "status")


def log_metrics(loggers: Sequence[Logger], metrics: dict[str, Any], step: int) -> None:
    """What ``fabric.log_dict`` does, without its walk of the dict for tensors.

    That walk (`lightning_utilities.apply_to_collection`) cost 0.2-0.4 ms a round, ~2% of a quickstart-sized
    round (measured): the round's metrics are Python numbers; a tensor (or NumPy number) a callback added
    becomes one here.
    """
    plain = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
    for logger in loggers:
        logger.log_metrics(metrics=plain, step=step)


class CSVMetricsLogger(Logger):
    """Writes one row per round to ``metrics.csv`` (deterministic) and the side files of `SIDE_FILES`.

    ``timing.csv`` gets the wall-clock times, ``system.csv`` the memory readings (``mem/*``), each in the rounds
    that have such columns.

    As Lightning's own loggers, it writes from global rank 0 only; on other ranks its methods do nothing.

    Rows are appended and flushed every round, so a killed run keeps every finished round. When a
    new metric appears (evaluation every few rounds, a callback's key), the file is rewritten once
    with the wider header.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._files = {name: _CSVFile(self.run_dir / name) for name in ("metrics.csv", *SIDE_FILES)}

    @property
    @override
    def name(self) -> str:
        return "csv"

    @property
    @override
    def version(self) -> str:
        return self.run_dir.name

    @override
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The config is written by the orchestrator as config.yaml; nothing to do here."""

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: v for k, v in metrics.items() if k != "round"}
        for name, prefixes in SIDE_FILES.items():
            side = {k: row.pop(k) for k in [k for k in row if k.startswith(prefixes)]}
            if side:
                self._files[name].append({"round": step, **side})
        self._files["metrics.csv"].append({"round": step, **row})

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        for f in self._files.values():
            f.close()

    @rank_zero_only
    def truncate(self, num_rounds: int) -> None:
        """Keep only rows of rounds < ``num_rounds`` (used on resume, so rows are neither lost nor repeated)."""
        for f in self._files.values():
            f.truncate(num_rounds)


class _CSVFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: list[str] = []
        self._fh: Any = None  # kept open between rounds; flushed after every row
        if path.exists():
            with path.open(newline="") as fh:
                self.header = next(csv.reader(fh), [])

    def rows(self) -> list[dict[str, str]]:
        """The file's rows (empty when it does not exist)."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)  # e.g. wandb/ for the selection table
        with atomic_open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.header)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        row = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in row if k not in self.header]
        if new or not self.path.exists():
            self.header += new
            self._rewrite([*self.rows(), row])
            return
        try:
            if self._fh is None:
                self._fh = self.path.open("a", newline="")
            csv.DictWriter(self._fh, fieldnames=self.header).writerow(row)
            self._fh.flush()
        except OSError as e:  # name the file: a full disk is reported as "while writing <file>"
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def truncate(self, num_rounds: int) -> None:
        if self.path.exists():
            self._rewrite([r for r in self.rows() if int(r["round"]) < num_rounds])


def _fmt(value: Any) -> Any:
    # repr round-trips floats exactly, so identical runs give byte-identical files.
    return repr(float(value)) if isinstance(value, float) else value


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as dicts of floats (empty cells left out)."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (`csfl_fabric.engine.files.atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _never_fails(method: F) -> F:
    """A W&B call that raises drops the W&B run (offline next, then none) and is retried: W&B never ends a run."""

    @functools.wraps(method)
    def call(self: WandbLogger, *args: Any, **kwargs: Any) -> Any:
        for _ in range(3):  # at most: the mode it is in, offline, no-op
            try:
                return method(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - logging is never worth a run
                if self.mode == "disabled" and self._run is not None:
                    return None
                self._lost(e)
        return None

    return call  # type: ignore[return-value]


class WandbLogger(Logger):
    """Logs each round to W&B with ``round`` as the step metric; offline by default, never hangs.

    Only global rank 0 logs (and starts W&B): on other ranks the logging methods do nothing.

    W&B is imported and initialised lazily on the first log. ``online`` with no network or no API
    key falls back to ``offline`` with one warning (short init timeout), so a run never waits ~100 s
    or dies for want of an account. Offline runs land in ``<run_dir>/wandb/`` for a later ``wandb sync``.
    No W&B failure ends a run: a failed init or call falls back to offline, then to no W&B (`_never_fails`).

    Args:
        mode: ``offline``, ``online`` or ``disabled``; the ``WANDB_MODE`` environment variable wins if set.
        project: the W&B project.
        run_dir: the run directory (W&B writes its files below it).
        config: the resolved config, shown as the run's config.
        name, group, job_type, tags, run_id: passed to ``wandb.init``.
    """

    def __init__(self, mode: str, project: str, run_dir: str | Path, config: dict[str, Any] | None = None,
                 name: str | None = None, group: str | None = None, job_type: str | None = None,
                 tags: list[str] | None = None, run_id: str | None = None, init_timeout: float = 15.0) -> None:
        self.mode = os.environ.get("WANDB_MODE") or mode
        self.project = project
        self.run_dir = Path(run_dir)
        self.init_kwargs: dict[str, Any] = {"config": config, "name": name, "group": group, "job_type": job_type,
                                            "tags": tags, "id": run_id}
        self.init_timeout = init_timeout
        self._run: Any = None
        # The selection table's rows, kept in the run directory: a resumed run logs the whole table again, so the
        # one table of the run (the last logged wins in W&B) has every round, not just the last session's.
        self._selection = _CSVFile(self.run_dir / "wandb" / SELECTION_TABLE)
        self._logged: set[str] = set()

    @property
    @override
    def name(self) -> str:
        return "wandb"

    @property
    @override
    def version(self) -> str:
        return self.experiment.id if self._run is not None else ""

    @property
    def experiment(self) -> Any:
        """The W&B run, initialised on first use."""
        if self._run is None:
            self._run = self._init()
        return self._run

    def _init(self) -> Any:
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = self._start(wandb)
        run.define_metric("round")
        run.define_metric("*", step_metric="round")
        # Accuracy against simulated time as well as rounds: a W&B metric has one x-axis, hence a second key.
        run.define_metric(SIM_TIME)
        run.define_metric(f"{BY_SIM_TIME}/*", step_metric=SIM_TIME)
        return run

    def _start(self, wandb: Any) -> Any:
        """``wandb.init`` in ``self.mode``; if that fails, offline (same id, then a fresh one), then a no-op run.

        After an online init times out W&B refuses the same id offline in this process ("run ID ... is in use"),
        hence the fresh id, which is written to ``wandb_id`` so that a resume continues that (offline) run.
        Whatever fails, the run goes on, with one warning saying where its W&B data went.
        """
        settings = wandb.Settings(init_timeout=self.init_timeout, console="off", silent=True,
                                  disable_git=True, disable_job_creation=True, x_disable_stats=True)
        kwargs = {k: v for k, v in self.init_kwargs.items() if v is not None and k != "id"}
        run_id = self.init_kwargs.get("id")
        attempts = [(self.mode, run_id)]
        if self.mode != "disabled":
            attempts += [*([("offline", run_id)] if self.mode == "online" else []),
                         ("offline", secrets.token_hex(4)), ("disabled", None)]
        failures: list[str] = []
        for mode, attempt_id in attempts:
            try:
                run = wandb.init(mode=mode, project=self.project, dir=str(self.run_dir), settings=settings,
                                 id=attempt_id, resume="allow" if attempt_id else None, reinit="create_new", **kwargs)
            except Exception as e:  # noqa: BLE001 - no W&B failure may end a run
                failures.append(f"{mode}: {type(e).__name__}: {' '.join(str(e).split())[:160]}")
                continue
            if failures:
                self._fell_back(mode, attempt_id, failures)
            self.mode = mode
            return run
        raise RuntimeError(f"W&B could not start even a disabled run: {failures}")  # pragma: no cover

    def _fell_back(self, mode: str, run_id: str | None, failures: list[str]) -> None:
        if mode == "offline":
            where = (f"logging offline instead{f' (run id {run_id})' if run_id else ''}; upload later with "
                     f"`wandb sync {self.run_dir / 'wandb'}`")
            id_file = self.run_dir / WANDB_ID_FILE
            if run_id != self.init_kwargs.get("id") and id_file.exists():
                atomic_write(id_file, f"{run_id}\n")
                self.init_kwargs["id"] = run_id
        else:
            where = "W&B is off for the rest of this run (metrics.csv still has every round)"
        warnings.warn(f"W&B failed ({'; '.join(failures)}); {where}.", stacklevel=3)

    def _lost(self, error: Exception) -> None:
        """A live W&B run failed mid-run: drop it; the next use starts offline (or a no-op run if offline failed)."""
        run, self._run = self._run, None
        with contextlib.suppress(Exception):
            if run is not None:
                run.finish(exit_code=1)
        self.mode = "offline" if self.mode == "online" else "disabled"
        self.init_kwargs["id"] = secrets.token_hex(4) if self.mode == "offline" else None
        warnings.warn(f"W&B failed mid-run ({type(error).__name__}: {' '.join(str(error).split())[:160]}); "
                      f"continuing {'offline' if self.mode == 'offline' else 'without W&B'}.", stacklevel=3)

    @override
    @rank_zero_only
    @_never_fails
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.experiment.config.update(params, allow_val_change=True)

    @override
    @rank_zero_only
    @_never_fails
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        extra = {f"{BY_SIM_TIME}/eval_acc": metrics["eval/acc"]} if "eval/acc" in metrics and SIM_TIME in metrics \
            else {}
        self._logged.update(metrics)
        self.experiment.log({**metrics, **extra, "round": step})

    @rank_zero_only
    def log_selection(self, round_idx: int, selection: Selection, durations: np.ndarray,
                      status: tuple[str, ...]) -> None:
        """Keep one row per selected client for the ``select/clients`` table, logged once when the run ends.

        One table per run, not per round: every logged table is a W&B artifact.
        """
        def column(values: np.ndarray | None) -> list[float | None]:
            return [None] * len(selection.ids) if values is None else [float(v) for v in values]

        rows = zip(np.asarray(selection.ids).tolist(), column(selection.scores), column(selection.probs),
                   column(durations), status, strict=True)
        for row in rows:
            self._selection.append(dict(zip(SELECTION_COLUMNS, [round_idx, *row], strict=True)))

    @rank_zero_only
    def truncate(self, num_rounds: int) -> None:
        """Keep only the selection rows of rounds < ``num_rounds`` (on resume, as `CSVMetricsLogger.truncate`)."""
        self._selection.truncate(num_rounds)

    @rank_zero_only
    @_never_fails
    def set_summary(self, summary: dict[str, Any]) -> None:
        """Set run-level summary values (best accuracy, time to accuracy, ...).

        A value that only repeats a logged metric's last value under another name (``fair_participation_gini``
        for ``fair/participation_gini``) is left out: W&B's summary holds each logged metric's last value already.
        Nothing is set when this session logged nothing (a finished run resumed): no empty W&B session.
        """
        if self._run is None:
            return
        for k, v in summary.items():
            if k.replace("_", "/", 1) not in self._logged:
                self._run.summary[k] = v

    @override
    @_never_fails
    def finalize(self, status: str) -> None:
        self._selection.close()
        if self._run is None:
            return  # nothing logged in this session: start none
        rows = [[_typed(row.get(c, "")) for c in SELECTION_COLUMNS] for row in self._selection.rows()]
        if rows:
            import wandb

            self._run.log({"select/clients": wandb.Table(columns=list(SELECTION_COLUMNS), data=rows),
                           "round": int(rows[-1][0])})
        self._run.finish(exit_code=0 if status == "success" else 1)
        self._run = None


def _typed(cell: str) -> Any:
    """A selection-table cell read back from CSV: int, float, the status string, or None when empty."""
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell

"""`StudyMetrics`: per-round fairness and cost metrics and the per-run study summary of a selection study."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from csfl_callbacks.base import Callback

from csfl_fabric.data.systems import TRAIN_FLOPS_PER_FORWARD
from csfl_fabric.engine.files import atomic_write
from csfl_fabric.engine.loggers import read_metrics, write_json
from csfl_fabric.study.metrics import label_coverage, summarize


def labels_present(store: Any, clients_at_once: int = 2**16) -> np.ndarray:
    """``present[c, j]``: client ``c`` of the `ClientStore` holds a sample of the ``j``-th label in ``store.y``.

    Vectorised over blocks of ``clients_at_once`` clients: a loop over 10^6 clients took ~35 s, and all of
    them at once would add a few index arrays of every sample to the run's peak memory.
    """
    flat, offsets = store.flat_indices()
    flat = flat.cpu().numpy()
    y = store.y.cpu().numpy()
    if y.size and y.min() >= 0:  # small non-negative labels (the usual case): a lookup table instead of a sort
        classes = np.flatnonzero(np.bincount(y))
        column = np.zeros(int(y.max()) + 1, dtype=np.min_scalar_type(max(len(classes) - 1, 0)))
        column[classes] = np.arange(len(classes))
        label = column[y]
    else:
        classes, label = np.unique(y, return_inverse=True)
    present = np.zeros((store.num_clients, len(classes)), dtype=bool)
    for first in range(0, store.num_clients, clients_at_once):
        last = min(first + clients_at_once, store.num_clients)
        sizes = np.diff(offsets[first : last + 1])
        owner = np.repeat(np.arange(first, last), sizes)
        present[owner, label.reshape(-1)[flat[offsets[first] : offsets[last]]]] = True
    return present


def params_bytes(params: dict[str, torch.Tensor]) -> int:
    """Bytes of a model's weights and buffers: what one client downloads and uploads per round."""
    return sum(t.numel() * t.element_size() for t in params.values())


class ParticipationStats:
    """The participation-fairness metrics of a count per client, kept up to date in O(changed clients) a round.

    Keeps a copy of the counts and their histogram (``hist[v]`` clients counted ``v`` times); the metrics come
    from the histogram's exact integer sums, in O(distinct counts): what `participation_variance`, `gini` and
    `normalized_entropy` of `csfl_fabric.study.metrics` compute in O(clients) (a sort for the Gini), which cost
    ~40 ms a round for 10^6 clients. The Gini is bit-identical to `gini`'s (its sums are exact integers in
    either); variance and entropy agree to float rounding (they are summed in another order).

    >>> stats = ParticipationStats(np.zeros(4, dtype=np.int64))
    >>> stats.update(np.array([1, 1, 2, 0]), [0, 1, 2])
    >>> {k: round(v, 4) for k, v in stats.metrics().items()}  # sorted 0 1 1 2: Gini 2*13/16 - 5/4
    {'fair/participation_var': 0.5, 'fair/participation_gini': 0.375, 'fair/participation_entropy': 0.75}
    """

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.array(counts, dtype=np.int64)
        self.hist = np.bincount(self.counts, minlength=1)

    def update(self, counts: np.ndarray, ids: Any) -> None:
        """Take the new ``counts`` of ``ids`` (the only entries that changed since the last call)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        old, new = self.counts[ids], counts[ids]
        if len(new) and new.max() >= len(self.hist):
            self.hist = np.concatenate([self.hist, np.zeros(new.max() + 1 - len(self.hist), dtype=np.int64)])
        np.subtract.at(self.hist, old, 1)
        np.add.at(self.hist, new, 1)
        self.counts[ids] = new

    def metrics(self) -> dict[str, float]:
        """``fair/participation_{var,gini,entropy}`` of the counts."""
        values = np.flatnonzero(self.hist)
        pairs = [(int(v), int(h)) for v, h in zip(values, self.hist[values], strict=True)]
        n = len(self.counts)
        total = sum(v * h for v, h in pairs)
        var = float(n * sum(v * v * h for v, h in pairs) - total * total) / (n * n) if n else math.nan
        # Gini as `gini` computes it: 2 sum_i i x_(i) / (n sum x) - (n + 1) / n over the sorted counts, the ranks
        # of a value's clients summed in closed form.
        dot, below = 0, 0
        for v, h in pairs:
            dot += v * (h * below + h * (h + 1) // 2)
            below += h
        gini_ = float(2 * float(dot) / (n * float(total)) - (n + 1) / n) if n and total else 0.0
        if n <= 1 or total == 0:
            entropy = 1.0 if n == 1 else math.nan
        else:
            v, h = np.array([p for p in pairs if p[0] > 0], dtype=float).T
            p = v / total
            entropy = float(-(h * p * np.log(p)).sum() / math.log(n))
        return {"fair/participation_var": var, "fair/participation_gini": gini_,
                "fair/participation_entropy": entropy}


class StudyMetrics(Callback):
    """Adds the metrics a selection study reports, per round to ``metrics.csv`` and per run to ``summary.json``.

    Per round: ``fair/participation_{var,gini,entropy}`` over every client's selection count so far
    (``ClientHistory.times_selected``, the run's one counter),
    ``fair/label_coverage`` of the round's cohort, and the round's cost, every probe included:
    ``cost/bytes_down`` (model bytes x clients sent the model: the cohort plus probed clients outside it),
    ``cost/bytes_up`` (model bytes x updates returned plus gradients sent by gradient probes), ``cost/flops``
    (3 x forward FLOPs per sample x samples trained, plus 1 x per sample a loss probe evaluates and 3 x per
    sample a gradient probe differentiates); the probes' share on its own in ``cost/probe_bytes_down`` (model
    bytes x distinct probed clients), ``cost/probe_bytes_up`` and ``cost/probe_flops``; and the cumulative
    ``*_total`` of each. The round's selection goes to ``selection.csv``.
    At the end `csfl_fabric.study.metrics.summarize` adds time to accuracy, area under the curve and gain per hour
    to the summary, which is also set as the W&B run summary.

    Everything is rebuilt from the run directory on a resume, so a resumed run continues the same totals.
    """

    def __init__(self) -> None:
        self.totals = {f"cost/{k}_total": 0.0 for k in ("bytes_down", "bytes_up", "flops", "probe_bytes_down",
                                                         "probe_bytes_up", "probe_flops")}
        self.info: dict[str, float] = {}
        self._present = np.zeros((0, 0), dtype=bool)
        self._participation = ParticipationStats(np.zeros(0, dtype=np.int64))
        self._cohort: list[int] = []
        self._samples = self._returned = 0
        self._writes = False
        # selection.csv, open from the first round's row to the run's end: reopening it cost ~0.15 ms a round.
        self._selection: Any = None

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Measure the model once (bytes, FLOPs, initial accuracy) and restore totals on a resume."""
        store, run_dir = orchestrator.store, orchestrator.run_dir
        self._close_selection()  # the file may be rewritten below: a handle would keep writing the old one
        # Every rank computes the same metrics; only rank 0 writes files, like the loggers.
        self._writes = run_dir is not None and orchestrator.fabric.global_rank == 0
        self._present = labels_present(store)
        self._participation = ParticipationStats(state.history.times_selected)
        info_path = run_dir / "study.json" if run_dir is not None else None
        if info_path is not None and info_path.exists() and state.round > 0:
            self.info = json.loads(info_path.read_text())
            self._restore(run_dir, state.round)
            return
        initial = orchestrator.trainer.evaluate(orchestrator.global_params, *orchestrator.test_data)
        flops = orchestrator.trainer.forward_flops(store.x)  # the count the trainer's kernel choice uses too
        self.info = {"initial_acc": initial["eval/acc"], "model_bytes": params_bytes(orchestrator.global_params),
                     "forward_flops_per_sample": flops}
        if info_path is not None and self._writes:
            info_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(info_path, self.info)
            atomic_write(run_dir / "selection.csv", "round,client_ids\n")

    def _restore(self, run_dir: Path, start_round: int) -> None:
        rows = [r for r in read_selection(run_dir) if r[0] < start_round]
        if self._writes:
            _write_selection(run_dir, rows)
        done = [r for r in read_metrics(run_dir) if r["round"] < start_round] if (run_dir / "metrics.csv").exists() \
            else []
        if done:
            self.totals = {k: done[-1].get(k, 0.0) for k in self.totals}

    def on_selection(self, state: Any, selection: Any) -> None:
        """Remember the cohort (its participation is counted in the run's `ClientHistory`)."""
        self._cohort = [int(c) for c in selection.ids]
        self._samples = self._returned = 0

    def on_client_end(self, state: Any, client_id: int, result: Any) -> None:
        """Count what a client processed and sent back."""
        self._samples += int(result.samples_processed)
        self._returned += 1

    def on_round_end(self, state: Any, metrics: dict[str, float], orchestrator: Any) -> None:
        """Add the round's fairness and cost metrics and append the selection to ``selection.csv``."""
        size, flops = float(self.info["model_bytes"]), float(self.info["forward_flops_per_sample"])
        probes = orchestrator.probes
        probe_flops = flops * (probes.forward_samples + TRAIN_FLOPS_PER_FORWARD * probes.gradient_samples)
        probe = {"cost/probe_bytes_down": size * len(probes.ids), "cost/probe_bytes_up": size * probes.uploads,
                 "cost/probe_flops": probe_flops}
        outside = len(probes.ids - set(self._cohort))  # probed clients the cohort did not already count
        per_round = {"cost/bytes_down": size * (len(self._cohort) + outside),
                     "cost/bytes_up": size * self._returned + probe["cost/probe_bytes_up"],
                     "cost/flops": TRAIN_FLOPS_PER_FORWARD * flops * self._samples + probe["cost/probe_flops"], **probe}
        for key, value in per_round.items():
            self.totals[f"{key}_total"] += value
        self._participation.update(orchestrator.state.history.times_selected, self._cohort)
        metrics.update({
            **self._participation.metrics(),
            "fair/label_coverage": label_coverage(self._present, self._cohort),
            **per_round, **self.totals,
        })
        if self._writes:
            if self._selection is None:
                self._selection = (orchestrator.run_dir / "selection.csv").open("a")
            self._selection.write(f"{state.round},{' '.join(map(str, self._cohort))}\n")
            self._selection.flush()  # a crash keeps every finished round's row, as a close would

    def on_run_end(self, state: Any, orchestrator: Any) -> None:
        """Add the study summary to the run summary and set it as the W&B run summary."""
        self._close_selection()
        run_dir = orchestrator.run_dir
        if run_dir is None or not (run_dir / "metrics.csv").exists() or not self.info:
            return
        summary = summarize(read_metrics(run_dir), self.info["initial_acc"], orchestrator.rounds.target_accuracy)
        orchestrator.summary.update({k: v for k, v in summary.items() if not _is_nan(v)})
        for logger in orchestrator.fabric.loggers:
            if hasattr(logger, "set_summary"):
                logger.set_summary({k: v for k, v in orchestrator.summary.items() if isinstance(v, (int, float))})

    def _close_selection(self) -> None:
        if self._selection is not None:
            self._selection.close()
            self._selection = None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def read_selection(run_dir: Path) -> list[tuple[int, list[int]]]:
    """The rows of a run's ``selection.csv``: ``(round, selected client ids)``."""
    path = run_dir / "selection.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [(int(r["round"]), [int(c) for c in r["client_ids"].split()]) for r in csv.DictReader(fh)]


def _write_selection(run_dir: Path, rows: list[tuple[int, list[int]]]) -> None:
    lines = [f"{r},{' '.join(map(str, ids))}\n" for r, ids in rows]
    atomic_write(run_dir / "selection.csv", "round,client_ids\n" + "".join(lines))


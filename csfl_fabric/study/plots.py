"""The report's plots: accuracy over rounds and simulated time, training loss, participation histograms.

Figures are made with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend
switch), so they render the same on a headless server and leave a notebook's backend alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from csfl_fabric.callbacks.study import read_selection
from csfl_fabric.engine.files import atomic_open
from csfl_fabric.study.metrics import SIM_TIME

if TYPE_CHECKING:
    from csfl_fabric.study.records import RunRecord


def make_plots(records: Sequence[RunRecord], out: Path, fmt: str = "png") -> list[Path]:
    """Write every plot the records allow to ``out`` in format ``fmt``; return their paths."""
    if not records:
        return []
    paths = [
        _curve(records, "eval/acc", "round", "test accuracy", out / f"accuracy_round.{fmt}"),
        _curve(records, "train/loss", "round", "training loss", out / f"train_loss.{fmt}"),
        _participation(records, out / f"participation.{fmt}"),
    ]
    if all(any(SIM_TIME in row for row in r.rows) for r in records):
        paths.append(_curve(records, "eval/acc", SIM_TIME, "test accuracy", out / f"accuracy_time.{fmt}"))
    return paths


def _series(record: RunRecord, y: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in record.rows if y in r and x in r]
    xs = np.array([r[x] + 1 if x == "round" else r[x] for r in rows])  # rounds completed, like time_to_*
    return xs, np.array([r[y] for r in rows])


def _curve(records: Sequence[RunRecord], y: str, x: str, ylabel: str, path: Path) -> Path:
    """Mean over seeds per variant, with a band from the minimum to the maximum seed."""
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label in dict.fromkeys(r.label for r in records):
        series = [_series(r, y, x) for r in records if r.label == label]
        series = [s for s in series if len(s[0])]
        if not series:
            continue
        # Seeds may log at different simulated times: interpolate onto a shared grid up to the shortest run.
        end = min(s[0][-1] for s in series)
        grid = series[0][0][series[0][0] <= end] if x == "round" else np.linspace(0, end, 100)
        values = np.stack([np.interp(grid, xs, ys) for xs, ys in series])
        ax.plot(grid, values.mean(axis=0), label=label)
        ax.fill_between(grid, values.min(axis=0), values.max(axis=0), alpha=0.2)
    ax.set_xlabel("round" if x == "round" else "simulated seconds")
    ax.xaxis.set_major_locator(MaxNLocator(integer=x == "round"))
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} (mean over seeds, band: min to max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return path


def _participation(records: Sequence[RunRecord], path: Path) -> Path:
    """Histogram of how many rounds each client was selected in, per variant (pooled over seeds)."""
    labels = list(dict.fromkeys(r.label for r in records))
    fig = Figure(figsize=(3.2 * len(labels), 3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(labels), sharey=True, squeeze=False)[0]
    for ax, label in zip(axes, labels, strict=True):
        counts = np.concatenate([selection_counts(r.run_dir) for r in records if r.label == label])
        ax.hist(counts, bins=np.arange(counts.max() + 2) - 0.5 if counts.size else 1)
        ax.set_title(label.replace(" ", "\n"), fontsize="small")  # method, then sweep point
        ax.set_xlabel("rounds selected")
    axes[0].set_ylabel("clients (all seeds)")
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig: Figure, path: Path) -> None:
    with atomic_open(path, "wb") as fh:  # a report rebuilt over an old one never leaves half a plot
        fig.savefig(fh, format=path.suffix[1:])


def selection_counts(run_dir: Path) -> np.ndarray:
    """How many rounds each client was selected in, from ``selection.csv`` (clients never selected count 0)."""
    import yaml

    num_clients = int(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["num_clients"])
    counts = np.zeros(num_clients, dtype=np.int64)
    for _, ids in read_selection(run_dir):
        np.add.at(counts, ids, 1)
    return counts

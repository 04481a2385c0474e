"""A 6-run study with ``--jobs 1`` and ``--jobs 2``: wall time as a ratio, and the peak PSS of the process tree.

Each study is a fresh ``python -m csfl_fabric compare`` process (1 method x 6 seeds of CONFIG, report included).
Its process tree's memory is sampled from outside (`csfl_callbacks.accounting.process_memory`: PSS, shared pages
counted once; at most ~5% of a core, like the study's own sampler, which runs too with ``--jobs 2``). The runs'
files of both studies are compared: they must be identical but for wall-clock fields. Target: ratio <= 0.6 on
2 cores. Noisy on a shared machine: the two studies compete with whatever else runs.

    python bench/study.py [--config configs/quickstart.yaml] [--rounds 100] [--runs 6] [overrides ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "callbacks"))
from csfl_callbacks.accounting import process_memory  # noqa: E402

SAME = ("metrics.csv", "selection.csv", "participation.csv", "study.json")


def study(config: str, jobs: int, runs: int, out: Path, overrides: list[str]) -> tuple[float, float]:
    """Wall seconds and peak PSS (GiB) of one ``compare`` process tree."""
    cmd = [sys.executable, "-m", "csfl_fabric", "compare", config, "--seeds", ",".join(map(str, range(runs))),
           "--jobs", str(jobs), f"logging.dir={out}", "logging.wandb=disabled", "logging.progress=false", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "callbacks")])}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    peak, pause = 0, 1.0
    while proc.poll() is None:
        started = time.perf_counter()
        peak = max(peak, process_memory(proc.pid))
        # Reading PSS costs 20-60 ms a process: wait 20 times as long, so the sampler costs < 5% of a core.
        pause = max(1.0, 20 * (time.perf_counter() - started))
        time.sleep(pause)
    wall = time.perf_counter() - start
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        sys.exit(f"--jobs {jobs} failed (exit {proc.returncode}):\n{output}")
    return wall, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    overrides = [f"rounds.num_rounds={args.rounds}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        results = {jobs: study(args.config, jobs, args.runs, Path(tmp) / f"jobs{jobs}", overrides) for jobs in (1, 2)}
        one, two = (sorted(p.parent for p in (Path(tmp) / f"jobs{j}").rglob("summary.json")
                           if p.parent.name != "report") for j in (1, 2))
        same = all((a / f).read_bytes() == (b / f).read_bytes() for a, b in zip(one, two, strict=True) for f in SAME)
    print(f"{args.runs}-run study of {args.config} ({args.rounds} rounds each), {os.cpu_count()} cores")
    for jobs, (wall, peak) in results.items():
        print(f"  --jobs {jobs}: {wall:7.1f} s wall, peak PSS of the process tree {peak:.2f} GiB")
    print(f"  ratio --jobs 2 / --jobs 1: {results[2][0] / results[1][0]:.2f} (target <= 0.6); "
          f"run files identical: {same}")


if __name__ == "__main__":
    main()

"""Regenerate the README's measured tables: run each producing command, rewrite its block, print what changed.

Every measured block of README.md sits between ``<!-- measured: NAME -->`` and ``<!-- /measured -->``. Its
first line is a stamp that says when, on what machine (cores, memory, load average, Python, torch) and with
which command it was made; the rest is the command's output, as a table or a code block. The prose around a
block is not rewritten: read the printed diff and update it where the numbers changed its meaning.

    python bench/regenerate_readme.py --list                       # the blocks, their commands, rough minutes
    python bench/regenerate_readme.py --only selectors,systems     # run these, rewrite their blocks, print the diff
    python bench/regenerate_readme.py --check                      # run every block, print the diff, write nothing
    python bench/regenerate_readme.py --notebooks                  # execute notebooks/*.ipynb in place, outputs kept

Running every block takes about 40 minutes on the 2-core development machine (see `--list`).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CLI = [sys.executable, "-m", "csfl_fabric"]
SYSTEMS_METHODS = "heuristic.random,system.oort,system.fedcs"


@dataclass(frozen=True)
class Block:
    """One measured block of the README: the command that produces it and how its output becomes Markdown."""

    name: str
    command: list[str]  # run from the repository root; "{work}" is a fresh temporary folder
    render: Callable[[str, Path], str]  # (stdout, work folder) -> the block's body
    minutes: float  # about how long it takes on the 2-core development machine


def code(stdout: str, work: Path) -> str:
    """The output as it is, in a code block."""
    return "```\n" + stdout.strip("\n") + "\n```"


def selectors(stdout: str, work: Path) -> str:
    """`bench/compare_selectors.py`'s rows as the README's selector table."""
    rows = [line.split() for line in stdout.splitlines() if re.match(r"^[a-z]+\.[a-z_]+ ", line)]
    out = ["| selector | final acc | best acc | mean acc, last 10 rounds | probed clients | selection ms/round |",
           "|---|---|---|---|---|---|"]
    for name, final, best, last10, _loss, probed, select_ms, _ratio in rows:
        out.append(f"| `{name}` | {float(final):.3f} | {float(best):.3f} | {float(last10):.3f} | {probed} | "
                   f"{float(select_ms):.2f} |")
    return "\n".join(out)


def _report_tables(work: Path, experiment: str) -> list[list[str]]:
    """The Markdown tables of a comparison's report.md, each as its lines."""
    lines = (work / "runs" / experiment / "report" / "report.md").read_text().splitlines()
    tables, current = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables, current = [*tables, current], []
    return tables


def systems_compare(stdout: str, work: Path) -> str:
    """The overview and the final-accuracy and time-to-80% tests of the systems comparison; copies its figure."""
    tables = _report_tables(work, "synthetic_system")
    overview, tests = tables[0], tables[-1]
    kept = [row for row in tests[2:] if row.split("|")[1].strip() in ("final_acc", "time_to_80pct")]
    figure = work / "runs" / "synthetic_system" / "report" / "accuracy_time.png"
    shutil.copy(figure, REPO / "docs" / "compare_accuracy_time.png")
    return "\n".join([*overview, "", *tests[:2], *kept])


def system_selectors(stdout: str, work: Path) -> str:
    """Time to accuracy, simulated time and participation of the system selectors, from each run's summary."""
    out = ["| selector | final acc | rounds / sim s to 0.6 | sim s for 100 rounds | Jain (completed) | never "
           "completed |", "|---|---|---|---|---|---|"]
    for method in SYSTEMS_METHODS.split(","):
        s = json.loads((work / "runs" / "synthetic_system" / f"{method}-seed0" / "summary.json").read_text())
        reached = f"{s['rounds_to_target']} / {s['sim_seconds_to_target']:.1f}" if "rounds_to_target" in s \
            else "not reached"
        out.append(f"| `{method}` | {s['final_acc']:.3f} | {reached} | {s['sim_total_s']:.1f} | "
                   f"{s['participation/jain_completed']:.2f} | {s['participation/never_completed_frac']:.2f} |")
    return "\n".join(out)


BLOCKS = [
    # The system selectors need the simulated systems this config has not (README "System selectors" has theirs).
    Block("selectors", [sys.executable, "bench/compare_selectors.py", "--rounds", "100", "--families",
                        "heuristic,learning"], selectors, 2),
    Block("system-selectors", [*CLI, "compare", "configs/synthetic_system.yaml", "--methods", SYSTEMS_METHODS,
                               "--seeds", "0", "rounds.num_rounds=100", "logging.wandb=disabled",
                               "logging.dir={work}/runs"], system_selectors, 1),
    Block("systems", [*CLI, "compare", "configs/synthetic_system.yaml", "--methods", SYSTEMS_METHODS,
                      "--seeds", "0,1,2", "rounds.num_rounds=40", "logging.wandb=disabled", "logging.dir={work}/runs"],
          systems_compare, 2),
    Block("scale", [sys.executable, "bench/scale.py", "--reps", "3"], code, 4),
    Block("overhead", [sys.executable, "bench/overhead.py", "--reps", "5"], code, 3),
    Block("memory", [sys.executable, "bench/memory.py"], code, 3),
    Block("memory-femnist", [sys.executable, "bench/memory.py", "--only", "femnist"], code, 2),
    Block("speed", [sys.executable, "bench/speed.py", "--reps", "5"], code, 8),
    Block("soak", [sys.executable, "bench/soak.py"], code, 8),
]


def machine() -> str:
    """What the numbers were measured on (no host names)."""
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    torch = importlib.metadata.version("torch")
    return (f"{os.cpu_count()} cores, {gib:.0f} GiB, {platform.system()} {platform.machine()}, load average "
            f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, torch {torch}")


def shown(command: list[str]) -> str:
    """The command as a reader would type it."""
    words = ["python" if w == sys.executable else w for w in command]
    return " ".join(w for w in words if not w.startswith("logging.dir="))


def measure(block: Block) -> str:
    """Run the block's command and return its new body, stamp first."""
    with tempfile.TemporaryDirectory(prefix=f"readme-{block.name}-") as tmp:
        work = Path(tmp)
        command = [w.replace("{work}", str(work)) for w in block.command]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "callbacks")]),
               "WANDB_MODE": "disabled"}
        stamp = machine()  # the load average before the run, which is what it ran under
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{block.name}: `{shown(block.command)}` failed (exit {proc.returncode}):\n"
                             + (proc.stderr or proc.stdout)[-3000:])
        body = block.render(proc.stdout, work)
    today = datetime.date.today().isoformat()
    return f"_Measured {today} on {stamp}: `{shown(block.command)}` ({seconds:.0f} s)._\n\n{body}"


def blocks_in(text: str) -> dict[str, tuple[int, int]]:
    """Each block's name -> the (start, end) offsets of its body in ``text``."""
    found = {}
    for m in re.finditer(r"<!-- measured: ([\w-]+) -->\n(.*?)<!-- /measured -->", text, flags=re.S):
        found[m.group(1)] = (m.start(2), m.end(2))
    return found


def execute_notebooks() -> None:
    """Run every notebook top to bottom in a scratch folder and save it with its outputs (what GitHub shows)."""
    import nbformat
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="readme-notebooks-") as tmp:
        # A kernel of this interpreter with this checkout on its path, as tests/test_notebooks.py uses.
        spec = Path(tmp) / "jupyter" / "kernels" / "csfl"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                               "{connection_file}"], "display_name": "csfl",
                                                      "language": "python"}))
        # The inline backend, so that figures are saved in the notebook (the tests run them headless with Agg).
        os.environ.update(JUPYTER_PATH=str(Path(tmp) / "jupyter"), WANDB_MODE="disabled",
                          MPLBACKEND="module://matplotlib_inline.backend_inline",
                          PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "callbacks")]))
        for path in sorted((REPO / "notebooks").glob("*.ipynb")):
            started = time.perf_counter()
            nb = nbformat.read(path, as_version=4)
            work = Path(tmp) / path.stem
            work.mkdir()
            NotebookClient(nb, kernel_name="csfl", timeout=600, resources={"metadata": {"path": str(work)}}).execute()
            nb.metadata.pop("widgets", None)
            nbformat.write(nb, path)
            print(f"{path.relative_to(REPO)}: executed in {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated block names (default: all)")
    parser.add_argument("--check", action="store_true", help="print what would change, write nothing")
    parser.add_argument("--list", action="store_true", help="list the blocks and their commands")
    parser.add_argument("--notebooks", action="store_true", help="execute the notebooks in place instead")
    args = parser.parse_args()
    if args.notebooks:
        execute_notebooks()
        return
    text = README.read_text()
    present = blocks_in(text)
    missing = [b.name for b in BLOCKS if b.name not in present]
    if missing:
        raise SystemExit(f"README.md has no block for {missing}: add `<!-- measured: NAME -->` ... "
                         "`<!-- /measured -->` around it.")
    if args.list:
        for b in BLOCKS:
            print(f"{b.name:18} ~{b.minutes:>3.0f} min  {shown(b.command)}")
        return
    names = args.only.split(",") if args.only else [b.name for b in BLOCKS]
    unknown = sorted(set(names) - {b.name for b in BLOCKS})
    if unknown:
        raise SystemExit(f"Unknown block(s) {unknown}; choose from {[b.name for b in BLOCKS]}.")
    for block in [b for b in BLOCKS if b.name in names]:
        print(f"== {block.name}: {shown(block.command)}", flush=True)
        new = measure(block) + "\n"
        start, end = blocks_in(text)[block.name]
        old = text[start:end]
        diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), "README (before)", "README (now)",
                                         lineterm=""))
        print("\n".join(diff) if diff else "(unchanged)", flush=True)
        text = text[:start] + new + text[end:]
        if not args.check:
            README.write_text(text)  # after each block, so that a later failure keeps the earlier ones


if __name__ == "__main__":
    main()

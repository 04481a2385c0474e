"""The CLI answers at once: `--help`, `list` and a bad-config error take about the time of `import torch`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, SMOKE

# Runs the CLI, then names the top-level packages it loaded (also after argparse's SystemExit for --help).
_RUN = ("import sys\nfrom csfl_fabric.cli import main\ntry:\n    code = main(sys.argv[1:])\nfinally:\n"
        "    print('LOADED', *sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr)\nsys.exit(code)")
HEAVY = {"lightning", "matplotlib", "scipy", "torchvision", "sklearn", "wandb", "torchmetrics"}


def _timed(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "callbacks")])}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    return time.perf_counter() - started, proc


@pytest.mark.parametrize(("args", "code", "expected"), [
    (["--help"], 0, "compare"),
    (["list"], 0, "heuristic.pow_d"),
    (["run", str(SMOKE), "selector.name=heuristic.rnadom"], 2, "Valid choices (closest first): heuristic.random"),
    (["run", str(SMOKE), "rounds.clients_per_round=500"], 2, "rounds.clients_per_round"),
])
def test_cli_answers_in_about_the_time_of_importing_torch(args: list[str], code: int, expected: str) -> None:
    # The 2-core machine is shared: the baseline is measured next to each command, the slack is generous (1.5x + 0.5 s)
    # and a slow outlier is retried once.
    for _attempt in range(2):
        torch_s, _ = _timed("-c", "import torch")
        seconds, proc = _timed("-c", _RUN, *args)
        assert proc.returncode == code, proc.stderr
        assert expected in proc.stdout + proc.stderr
        loaded = set(proc.stderr.split("LOADED", 1)[1].split())
        assert not loaded & HEAVY
        if seconds <= 1.5 * torch_s + 0.5:
            break
    assert seconds <= 1.5 * torch_s + 0.5, f"{args}: {seconds:.2f} s against import torch {torch_s:.2f} s"


def test_a_run_imports_only_what_it_uses(tmp_path) -> None:
    # Fabric comes as `lightning_fabric` (not the `lightning` package, whose __init__ imports the Trainer) and the
    # evaluation metrics are csfl_fabric's own: neither torchmetrics nor what it imports (torchvision,
    # matplotlib) is loaded by a run on digits without W&B (scikit-learn's digits bring scipy).
    _, proc = _timed("-c", _RUN, "run", str(SMOKE), "rounds.num_rounds=1", f"logging.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stderr.split("LOADED", 1)[1].split())
    assert "lightning_fabric" in loaded
    assert not loaded & (HEAVY - {"sklearn", "scipy"})


def _passes_in_a_fresh_interpreter(code: str) -> None:
    _, proc = _timed("-c", code + "\nprint('ok')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_fabric_comes_without_torchmetrics_and_leaves_the_real_one_importable() -> None:
    _passes_in_a_fresh_interpreter(
        "import sys\nimport csfl_fabric.engine.fabric as f\nimport lightning_fabric.utilities.imports as i\n"
        "assert 'torchmetrics' not in sys.modules and 'lightning' not in sys.modules\n"
        "assert f.Fabric.__module__.startswith('lightning_fabric')\n"
        "assert i._TORCHMETRICS_GREATER_EQUAL_1_0_0 is True  # the stub carried the installed version\n"
        "import torchmetrics\nassert hasattr(torchmetrics, 'Metric')")


def test_fabric_falls_back_to_the_lightning_package_without_the_standalone_copy() -> None:
    # A Lightning install whose wheels do not ship `lightning_fabric`: Fabric comes from `lightning.fabric`.
    _passes_in_a_fresh_interpreter(
        "import importlib.util as u\nfind = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'lightning_fabric' else find(name, *a)\n"
        "import csfl_fabric.engine.fabric as f\nassert f.Fabric.__module__.startswith('lightning.fabric')\n"
        "assert f.Logger.__module__.startswith('lightning.fabric')")

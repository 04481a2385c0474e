"""Bad input, table-driven through the CLI: one line naming the problem, exit code 2, no traceback, nothing lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from csfl_fabric.cli import main

from .conftest import REPO, SMOKE

RUN = ["run", "{smoke}", "logging.dir={runs}"]
# (id, argv with {placeholders}, a substring the one-line message must contain)
CASES: list[tuple[str, list[str], str]] = [
    ("missing-config-file", ["run", "{tmp}/nope.yaml"], "does not exist"),
    ("malformed-yaml", ["run", "{bad_yaml}"], "is not valid YAML at line"),
    ("yaml-not-a-mapping", ["run", "{list_yaml}"], "must hold a mapping"),
    ("override-without-equals", [*RUN, "rounds.num_rounds"], "not of the form key=value"),
    ("unknown-section", [*RUN, "roundz.num_rounds=3"], "Unknown config key `roundz`"),
    ("unknown-key", [*RUN, "train.lrr=0.1"], "Unknown config key `train.lrr`"),
    ("wrong-type-int", [*RUN, "rounds.num_rounds=many"], "Expected `rounds.num_rounds` to be an integer"),
    ("wrong-type-float", [*RUN, "train.lr=fast"], "Expected `train.lr` to be a number"),
    ("wrong-type-bool", [*RUN, "data.download=perhaps"], "Expected `data.download` to be true or false"),
    ("zero-clients", [*RUN, "data.num_clients=0"], "`data.num_clients` to be >= 1"),
    ("zero-rounds", [*RUN, "rounds.num_rounds=0"], "`rounds.num_rounds` to be >= 1"),
    ("negative-rounds", [*RUN, "rounds.num_rounds=-5"], "`rounds.num_rounds` to be >= 1 but got -5"),
    ("zero-batch", [*RUN, "train.batch_size=0"], "`train.batch_size` to be >= 1"),
    ("zero-epochs", [*RUN, "train.local_epochs=0"], "`train.local_epochs` to be >= 1"),
    ("zero-local-steps", [*RUN, "train.local_steps=0"], "`train.local_steps` to be >= 1"),
    ("negative-seed", [*RUN, "seed=-1"], "`seed` to be >= 0"),
    ("k-above-clients", [*RUN, "rounds.clients_per_round=11"], "in [1, data.num_clients=10] but got 11"),
    ("k-zero", [*RUN, "rounds.clients_per_round=0"], "`rounds.clients_per_round`"),
    ("alpha-zero", [*RUN, "data.partition.alpha=0"], "`data.partition.params.alpha=0`"),
    ("alpha-negative", [*RUN, "data.partition.params.alpha=-1"], "`data.partition.params.alpha=-1`"),
    ("zero-lr", [*RUN, "train.lr=0"], "`train.lr` to be > 0"),
    ("negative-momentum", [*RUN, "train.momentum=-0.1"], "`train.momentum` to be >= 0"),
    ("ram-threshold", [*RUN, "memory.ram_threshold=1.5"], "`memory.ram_threshold` to be in (0, 1]"),
    ("target-accuracy", [*RUN, "rounds.target_accuracy=95"], "`rounds.target_accuracy` to be in (0, 1]"),
    ("target-accuracy-list", [*RUN, "rounds.target_accuracy=[0.5,high]"], "a list of such values (e.g. [0.6,0.7])"),
    ("target-accuracy-empty", [*RUN, "rounds.target_accuracy=[]"], "but got []"),
    ("target-fraction", [*RUN, "compare.target_fraction=0"], "`compare.target_fraction` to be in (0, 1]"),
    ("unknown-selector", [*RUN, "selector.name=heuristic.rnadom"], "heuristic.random"),
    ("unknown-aggregator", [*RUN, "aggregator.name=fedadamm"], "fedadam"),
    ("unknown-model", [*RUN, "train.model=resnet19"], "resnet18"),
    ("unknown-dataset", [*RUN, "data.dataset=mnits"], "mnist"),
    ("unknown-selector-param", [*RUN, "selector.params.temperature=2"], "Unknown param `temperature`"),
    ("bad-aggregator-value", [*RUN, "aggregator.name=fedadam", "aggregator.beta1=2"], "`aggregator.params.beta1`"),
    ("bad-choice-optimizer", [*RUN, "train.optimizer=lbfgs"], "`train.optimizer`"),
    ("bad-choice-precision", [*RUN, "fabric.precision=8-true"], "`fabric.precision`"),
    ("bad-choice-wandb", [*RUN, "logging.wandb=sometimes"], "`logging.wandb`"),
    ("bad-choice-resume", [*RUN, "resume=yes"], "`resume`"),
    ("bad-choice-divergence", [*RUN, "train.on_divergence=ignore"], "`train.on_divergence`"),
    ("checkpoint-keep-zero", [*RUN, "checkpoint.keep=0"], "`checkpoint.keep` to be >= 1"),
    ("checkpoint-every-negative", [*RUN, "checkpoint.every_n_rounds=-1"], "`checkpoint.every_n_rounds` to be >= 0"),
    ("dataset-root-missing", [*RUN, "data.dataset=mnist", "data.root={tmp}/no_data"], "set `data.download=true`"),
    ("synthetic-negative-beta", [*RUN, "data.dataset=synthetic", "data.params.beta=-1"], "`data.params.beta=-1`"),
    ("selector-import-fails", [*RUN, "selector.import=no_such_module_xyz"], "selector.import"),
    ("unwritable-run-dir", ["run", "{smoke}", "logging.dir={a_file}/runs"], "Cannot write the run directory"),
    ("resume-missing-dir", ["resume", "{tmp}/no_such_run"], "is not a run directory"),
    ("resume-without-checkpoint", ["resume", "{no_ckpt}"], "has no checkpoint to resume from"),
    ("resume-corrupt-checkpoint", ["resume", "{corrupt}"], "is corrupt or not a checkpoint"),
    ("resume-foreign-file", ["resume", "{foreign}"], "is not a csfl_fabric checkpoint"),
    ("resume-different-config", ["resume", "{existing}", "seed=1"], "written by a run with a different config"),
    ("auto-resume-different-config", [*RUN, "resume=auto", "train.lr=0.2"], "different config"),
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A folder with a finished run and every broken file the table needs."""
    tmp = tmp_path_factory.mktemp("bad_input")
    runs = tmp / "runs"
    assert main(["run", str(SMOKE), f"logging.dir={runs}", "rounds.num_rounds=2", "checkpoint.every_n_rounds=1",
                 "logging.wandb=disabled"]) == 0
    existing = runs / "smoke" / "heuristic.random-seed0"
    corrupt, no_ckpt, foreign = tmp / "corrupt", tmp / "no_ckpt", tmp / "foreign"
    for d in (corrupt, foreign):
        shutil.copytree(existing, d)
    latest = sorted((corrupt / "checkpoints").iterdir())[-1]
    latest.write_bytes(latest.read_bytes()[:300])  # truncated, as by a disk error
    torch.save({"weights": torch.zeros(2)}, sorted((foreign / "checkpoints").iterdir())[-1])
    no_ckpt.mkdir()
    shutil.copy(existing / "config.yaml", no_ckpt / "config.yaml")
    (tmp / "bad.yaml").write_text("rounds:\n  num_rounds: [1, 2\n")
    (tmp / "list.yaml").write_text("- rounds\n- train\n")
    (tmp / "a_file").write_text("not a folder\n")
    return {"tmp": str(tmp), "runs": str(runs), "smoke": str(SMOKE), "existing": str(existing),
            "corrupt": str(corrupt), "no_ckpt": str(no_ckpt), "foreign": str(foreign),
            "bad_yaml": str(tmp / "bad.yaml"), "list_yaml": str(tmp / "list.yaml"), "a_file": str(tmp / "a_file")}


def _tree(root: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(ctx: dict[str, str], capsys: Any, argv: list[str], expected: str) -> None:
    before = _tree(ctx["tmp"])
    code = main([a.format(**ctx) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("csfl-fabric: error: ")
    assert expected in lines[0]
    assert "Traceback" not in out + err
    assert _tree(ctx["tmp"]) == before  # nothing existing overwritten, nothing new written


def test_bad_input_in_a_real_process(ctx: dict[str, str]) -> None:
    # One real process (the console script's path: `python -m csfl_fabric`); the table runs in-process for speed.
    before = _tree(ctx["tmp"])
    cmd = [sys.executable, "-m", "csfl_fabric", "resume", ctx["corrupt"]]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert _tree(ctx["tmp"]) == before

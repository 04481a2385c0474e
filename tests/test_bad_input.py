"""Bad input, table-driven through the CLI: one line naming the problem, exit code 2, no traceback, nothing lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from csfl_fabric.cli import main
from csfl_fabric.engine.checkpoint import load_checkpoint, save_checkpoint
from csfl_fabric.engine.files import RunLock
from csfl_fabric.engine.resume import latest_checkpoint

from . import bad_plugins
from .conftest import REPO, SMOKE

RUN = ["run", "{smoke}", "logging.dir={runs}"]
BROKEN = [*RUN, "selector.name=test.broken"]
WANDB = [*RUN, "logging.wandb=offline"]
# (id, argv with {placeholders} (`{{` for a literal brace), a substring the one-line message must contain)
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
    ("negative-native-conv-flops", [*RUN, "train.native_conv_flops=-1"], "`train.native_conv_flops` to be >= 0"),
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
    ("auto-resume-different-config", [*RUN, "--run-dir", "{existing}", "resume=auto", "train.lr=0.2"],
     "different config"),
    # Issue 15 -- NaN passes every `> 0` check, inf breaks arithmetic: both refused where a finite number is needed.
    ("nan-lr", [*RUN, "train.lr=nan"], "Expected `train.lr` to be a finite number but got nan"),
    ("inf-lr", [*RUN, "train.lr=inf"], "Expected `train.lr` to be a finite number but got inf"),
    ("nan-momentum", [*RUN, "train.momentum=nan"], "`train.momentum` to be a finite number"),
    ("inf-weight-decay", [*RUN, "train.weight_decay=inf"], "`train.weight_decay` to be a finite number"),
    ("inf-clip-grad-norm", [*RUN, "train.clip_grad_norm=inf"], "`train.clip_grad_norm` to be a finite number"),
    ("nan-check-interval", [*RUN, "memory.check_interval_s=nan"], "`memory.check_interval_s` to be a finite"),
    ("nan-speed-sigma", [*RUN, "systems.speed_sigma=nan"], "`systems.speed_sigma` to be a finite number"),
    ("inf-overcommit", [*RUN, "systems.overcommit=inf"], "`systems.overcommit` to be a finite number but got inf"),
    ("nan-deadline", [*RUN, "systems.deadline=nan"], "`systems.deadline` to be a finite number"),
    ("nan-component-param", [*RUN, "aggregator.name=fedadam", "aggregator.server_lr=.nan"],
     "Expected `aggregator.params.server_lr` to be a finite number but got nan"),
    # Config files: empty, duplicate keys, not UTF-8.
    ("empty-config", ["run", "{empty_yaml}"], "is empty (or only comments)"),
    ("comment-only-config", ["run", "{comment_yaml}"], "is empty (or only comments)"),
    ("duplicate-top-level-key", ["run", "{dup_yaml}"], "has the key `experiment` twice (lines 1 and 3)"),
    ("duplicate-nested-key", ["run", "{dup_nested_yaml}"], "has the key `lr` twice (lines 3 and 4)"),
    ("config-not-utf8", ["run", "{latin1_yaml}"], "is not UTF-8 text (byte 0xe9"),
    # Overrides: YAML and interpolation errors.
    ("override-bad-yaml", [*RUN, "train.lr=[1,"], "Override `train.lr=[1,` does not parse"),
    ("override-bad-flow-map", [*RUN, "selector.params={{a: 1"], "Override `selector.params={a: 1` does not parse"),
    ("override-unknown-interpolation", [*RUN, "train.lr=${{nope}}"], "`train.lr`"),
    ("override-missing-env", [*RUN, "experiment=${{oc.env:CSFL_NO_SUCH_VAR}}"], "CSFL_NO_SUCH_VAR"),
    # Paths that would leave the runs directory.
    ("experiment-parent-path", [*RUN, "experiment=../../x"], "Expected `experiment` to be a plain folder name"),
    ("experiment-absolute", [*RUN, "experiment=/tmp/elsewhere"], "`experiment` to be a plain folder name"),
    ("experiment-from-env", [*RUN, "experiment=${{oc.env:HOME}}"], "`experiment` to be a plain folder name"),
    ("run-name-absolute", [*RUN, "logging.run_name=/tmp/x"], "`logging.run_name` to be a plain folder name"),
    ("run-name-dotdot", [*RUN, "logging.run_name=.."], "`logging.run_name` to be a plain folder name"),
    # Run directories: one run per directory, no going back.
    ("run-into-finished-run", [*RUN, "--run-dir", "{existing}"], "already holds a run"),
    ("run-into-locked-dir", [*RUN, "--run-dir", "{locked}"], f"is in use by process {os.getpid()}"),
    ("resume-locked-run", ["resume", "{locked}"], f"is in use by process {os.getpid()}"),
    ("resume-below-checkpoint", ["resume", "{existing}", "rounds.num_rounds=1"],
     "Expected `rounds.num_rounds` >= 2 (checkpoint `round-000002.pt` holds 2 finished rounds) but got 1"),
    # Checkpoints that were tampered with.
    ("resume-malicious-checkpoint", ["resume", "{malicious}"], "asks to load `posix.system`"),
    ("resume-missing-keys", ["resume", "{missing_keys}"], "does not fit this run (KeyError: 'history')"),
    ("resume-wrong-shapes", ["resume", "{wrong_shapes}"], "does not fit this run (ValueError: global_params["),
    # Plug-ins: a selector breaking its contract in round 0 (nothing may be left behind), a model that does not
    # fit the data, a module calling sys.exit on import.
    ("selector-duplicate-ids", [*BROKEN, "selector.mode=duplicate"],
     "Selector `test.broken` in round 0: selected a client twice"),
    ("selector-out-of-range", [*BROKEN, "selector.mode=out_of_range"], "selected unavailable clients [10000]"),
    ("selector-empty", [*BROKEN, "selector.mode=empty"], "returned 0 ids; it must return between 1 and k=4"),
    ("selector-too-many", [*BROKEN, "selector.mode=too_many"], "returned 5 ids but k=4 (returned ids [0, 1, 2, 3, 4])"),
    ("selector-float-ids", [*BROKEN, "selector.mode=float_ids"], "ids of dtype float64"),
    ("selector-nan-weights", [*BROKEN, "selector.mode=nan_weights"], "returned non-finite `weights`"),
    ("selector-negative-weights", [*BROKEN, "selector.mode=negative_weights"], "weights must be >= 0"),
    ("selector-short-probs", [*BROKEN, "selector.mode=short_probs"], "returned `probs` of shape (1,) for 4 ids"),
    ("selector-not-a-selection", [*BROKEN, "selector.mode=not_a_selection"], "in round 0: returned a list"),
    ("model-does-not-fit", [*RUN, "train.model=test.wrong_input"], "`train.model=test.wrong_input` does not fit"),
    ("model-for-other-inputs", [*RUN, "data.dataset=synthetic", "train.model=cnn"], "`train.model` `cnn`"),
    ("plugin-calls-sys-exit", [*RUN, "selector.import=csfl_exit_on_import"], "it called sys.exit(3) on import"),
    ("accelerator-unavailable", [*RUN, "fabric.accelerator=mps"], "`fabric.accelerator=mps`"),
    # W&B would reject these names: refused before round 0, not at the first log.
    ("wandb-bad-project", [*WANDB, "logging.project=team/project"], "`logging.project` to be a W&B project name"),
    ("wandb-long-tag", [*WANDB, f"logging.tags=[{'t' * 65}]"], "`logging.tags[0]` to be a W&B tag of 1-64"),
    ("wandb-empty-tag", [*WANDB, "logging.tags=['']"], "`logging.tags[0]` to be a W&B tag"),
    # Trace files, corrupt summaries, comparisons.
    ("trace-negative-id", [*RUN, "systems.availability=trace", "systems.trace={bad_trace}"], "client id -1 (row 3)"),
    ("report-corrupt-summary", ["report", "{corrupt_summary}"], "summary.json` cannot be read (JSONDecodeError"),
    ("runs-corrupt-summary", ["runs", "{corrupt_summary}"], "summary.json` cannot be read"),
    ("compare-duplicate-method", ["compare", "{smoke}", "logging.dir={runs}", "--methods",
                                  "heuristic.random,heuristic.random"], "lists `heuristic.random` more than once"),
    ("compare-empty-methods", ["compare", "{smoke}", "logging.dir={runs}", "--methods", ","], "`--methods` is empty"),
    ("compare-duplicate-seed", ["compare", "{smoke}", "logging.dir={runs}", "--seeds", "0,0"], "lists `0` more"),
]
if not torch.cuda.is_available():
    CASES.append(("accelerator-gpu-without-gpu", [*RUN, "fabric.accelerator=gpu"], "`fabric.accelerator=gpu`"))

CONFIGS = {
    "bad_yaml": "rounds:\n  num_rounds: [1, 2\n", "list_yaml": "- rounds\n- train\n", "empty_yaml": "",
    "comment_yaml": "# nothing here yet\n   \n", "dup_yaml": "experiment: a\nseed: 0\nexperiment: b\n",
    "dup_nested_yaml": "experiment: a\ntrain:\n  lr: 0.1\n  lr: 0.2\n",
}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A folder with a finished run and every broken file the table needs (and the test plug-ins registered)."""
    tmp = tmp_path_factory.mktemp("bad_input")
    runs = tmp / "runs"
    assert main(["run", str(SMOKE), f"logging.dir={runs}", "rounds.num_rounds=2", "checkpoint.every_n_rounds=1",
                 "logging.wandb=disabled"]) == 0
    (existing,) = (runs / "smoke").iterdir()
    paths = {name: tmp / name for name in ("corrupt", "foreign", "no_ckpt", "locked", "malicious", "missing_keys",
                                           "wrong_shapes")}
    for name in ("corrupt", "foreign", "locked", "malicious", "missing_keys", "wrong_shapes"):
        shutil.copytree(existing, paths[name])
    latest = latest_checkpoint(existing)
    assert latest is not None
    broken = paths["corrupt"] / "checkpoints" / latest.name
    broken.write_bytes(broken.read_bytes()[:300])  # truncated, as by a disk error
    torch.save({"weights": torch.zeros(2)}, paths["foreign"] / "checkpoints" / latest.name)
    _tamper(latest, paths)
    paths["no_ckpt"].mkdir()
    shutil.copy(existing / "config.yaml", paths["no_ckpt"] / "config.yaml")
    for name, text in CONFIGS.items():
        (tmp / f"{name}.yaml").write_text(text)
    (tmp / "latin1_yaml.yaml").write_bytes("experiment: caf\u00e9\n".encode("latin-1"))
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "bad_trace.csv").write_text("client_id,start,end\n0,0,5\n-1,0,5\n")
    summary_dir = tmp / "corrupt_summary" / "run"
    summary_dir.mkdir(parents=True)
    shutil.copy(existing / "config.yaml", summary_dir / "config.yaml")
    (summary_dir / "summary.json").write_text('{"status": "succ')
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "csfl_exit_on_import.py").write_text("import sys\nsys.exit(3)\n")
    sys.path.insert(0, str(plugins))
    lock = RunLock(paths["locked"]).acquire()  # as a run in another process would hold it (same pid here)
    bad_plugins.register()
    yield {"tmp": str(tmp), "runs": str(runs), "smoke": str(SMOKE), "existing": str(existing),
           "a_file": str(tmp / "a_file"), "bad_trace": str(tmp / "bad_trace.csv"),
           "corrupt_summary": str(tmp / "corrupt_summary"), "latin1_yaml": str(tmp / "latin1_yaml.yaml"),
           **{name: str(path) for name, path in paths.items()}, **{name: str(tmp / f"{name}.yaml") for name in CONFIGS}}
    bad_plugins.unregister()
    lock.release()
    sys.path.remove(str(plugins))


class _Evil:
    """Unpickling this runs a shell command (what a tampered checkpoint would do): it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def _tamper(latest: Path, paths: dict[str, Path]) -> None:
    ckpt = load_checkpoint(latest)
    state, meta = ckpt["state"], ckpt["meta"]
    target = f"checkpoints/{latest.name}"
    torch.save({"format": 2, "meta": meta, "state": _Evil(paths["malicious"] / "MARKER")}, paths["malicious"] / target)
    save_checkpoint(paths["missing_keys"] / target, {k: v for k, v in state.items() if k != "history"}, meta)
    key = next(iter(state["global_params"]))
    save_checkpoint(paths["wrong_shapes"] / target,
                    {**state, "global_params": {**state["global_params"], key: torch.zeros(3)}}, meta)


def _tree(root: str) -> dict[str, str]:
    # Folders too: a run directory left behind empty is something left behind.
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(Path(root).rglob("*")) if "__pycache__" not in p.parts}


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30 + 40
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
    assert _tree(ctx["tmp"]) == before  # nothing existing overwritten, nothing new written (no run directory)


def test_a_malicious_checkpoint_runs_nothing(ctx: dict[str, str], capsys: Any) -> None:
    marker = Path(ctx["malicious"]) / "MARKER"
    assert main(["resume", ctx["malicious"]]) == 2
    assert "nothing in it ran" in capsys.readouterr().err
    assert not marker.exists()
    # The same file under the unsafe loader would have created the marker: the test's file is really malicious.
    torch.load(latest_checkpoint(ctx["malicious"]), weights_only=False)  # type: ignore[arg-type]
    assert marker.exists()
    marker.unlink()


def test_bad_input_in_a_real_process(ctx: dict[str, str]) -> None:
    # One real process (the console script's path: `python -m csfl_fabric`); the table runs in-process for speed.
    before = _tree(ctx["tmp"])
    cmd = [sys.executable, "-m", "csfl_fabric", "resume", ctx["corrupt"]]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert _tree(ctx["tmp"]) == before

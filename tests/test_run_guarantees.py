"""What a run promises (README "What a run promises"): one run per directory, unique default names, atomic side
files, a full disk reported in one line, global generators seeded and resumed, the CLI's error boundary."""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import csfl_fabric.engine.checkpoint as checkpoint_module
from csfl_fabric import run
from csfl_fabric.api import resume
from csfl_fabric.build import build_run, stream
from csfl_fabric.cli import main
from csfl_fabric.config import load_config
from csfl_fabric.engine.files import atomic_write, make_fresh_dir
from csfl_fabric.errors import RunInterrupted

from . import bad_plugins
from .conftest import REPO, SMOKE
from .test_resume import StopAt

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
CKPT = ["checkpoint.every_n_rounds=1"]


@pytest.fixture
def plugins() -> Iterator[None]:
    bad_plugins.register()
    yield
    bad_plugins.unregister()


# Holds its run directory (via the API) until the test creates `go`: the second process must be refused meanwhile.
HOLDER = """
import sys, time
from pathlib import Path
from csfl_fabric import run
ready, go = Path(sys.argv[2]) / "ready", Path(sys.argv[2]) / "go"
class Hold:
    def on_run_start(self):
        ready.touch()
        deadline = time.time() + 120
        while not go.exists() and time.time() < deadline:
            time.sleep(0.05)
run(sys.argv[3], sys.argv[4:], callbacks=[Hold()], run_dir=sys.argv[1])
"""


def test_a_second_process_is_refused_while_the_first_holds_the_run_directory(tmp_path: Path, capsys: Any) -> None:
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(tmp_path), str(SMOKE), "logging.wandb="
                              "disabled"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "ready").exists():
            assert first.poll() is None, first.stdout.read()  # type: ignore[union-attr]
            assert time.time() < deadline
            time.sleep(0.05)
        for argv in (["run", str(SMOKE), "--run-dir", str(run_dir)], ["resume", str(run_dir)]):
            # This test's own process is the second one (flock locks belong to open files, not processes).
            assert main(argv) == 2
            assert capsys.readouterr().err.strip().splitlines() == [
                f"csfl-fabric: error: Run directory `{run_dir}` is in use by process {first.pid} on "
                f"{os.uname().nodename} (lock file `{run_dir / '.lock'}`); wait for that run to end, or pass "
                "another --run-dir."]
    finally:
        (tmp_path / "go").touch()
        assert first.wait(timeout=300) == 0
    assert not (run_dir / ".lock").exists()  # released (and removed) when the run ended
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 3  # only the first run's rows


def test_default_names_differ_when_the_results_would(tmp_path: Path) -> None:
    over = [f"logging.dir={tmp_path}", "rounds.num_rounds=1"]
    a = run(SMOKE, [*over, "train.lr=0.05"]).run_dir
    b = run(SMOKE, [*over, "train.lr=0.2"]).run_dir
    again = run(SMOKE, [*over, "train.lr=0.05"]).run_dir
    assert a.parent == b.parent == tmp_path / "smoke"
    assert a.name.startswith("heuristic.random-seed0-")
    assert a.name != b.name
    assert again.name == f"{a.name}-1"  # the same config again: a fresh folder, never the first run's
    assert "lr: 0.2" in (b / "config.yaml").read_text()


def test_a_fresh_directory_is_claimed_atomically(tmp_path: Path) -> None:
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(make_fresh_dir(tmp_path / "exp" / "r"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in made) == sorted(["r", *(f"r-{i}" for i in range(1, 8))])


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("old\n")

    def crash(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="Input/output error") as info:
        atomic_write(path, "new\n")
    assert info.value.filename == str(path)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# Resumes the run with more rounds but is SIGKILLed inside the rename that would replace config.yaml.
KILL_IN_REWRITE = """
import os, signal, sys
import csfl_fabric.engine.files as files
from csfl_fabric.api import resume
real = os.replace
def replace(src, dst):
    if str(dst).endswith("config.yaml"):
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
files.os.replace = replace
resume(sys.argv[1], ["rounds.num_rounds=5"])
"""


def test_a_kill_while_config_yaml_is_rewritten_leaves_a_resumable_run(tmp_path: Path) -> None:
    first = run(SMOKE, [f"logging.dir={tmp_path}", *CKPT]).run_dir
    before = (first / "config.yaml").read_text()
    proc = subprocess.run([sys.executable, "-c", KILL_IN_REWRITE, str(first)], env=ENV, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (first / "config.yaml").read_text() == before  # the old file, whole: the config hash still matches
    assert (first / ".config.yaml.tmp").exists()  # the new one was written but never renamed in
    resumed = resume(first, ["rounds.num_rounds=5"])
    assert [int(m["round"]) for m in resumed.metrics] == list(range(5))


def test_a_full_disk_gives_one_line_and_a_failed_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: Any) -> None:
    real, calls = checkpoint_module.atomic_write, []

    def third_fails(path: Path, data: Any) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "atomic_write", third_fails)
    code = main(["run", str(SMOKE), f"logging.dir={tmp_path}", *CKPT])
    (run_dir,) = (tmp_path / "smoke").iterdir()
    ckpts = run_dir / "checkpoints"
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"csfl-fabric: error: no space left on device while writing `{ckpts / 'round-000002.pt'}` (No space left on "
        f"device); the last good checkpoint is `{ckpts / 'round-000001.pt'}`; free space and resume with: "
        f"csfl-fabric resume {run_dir}"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert len(calls) == 3  # no second attempt on the way out
    monkeypatch.setattr(checkpoint_module, "atomic_write", real)
    assert main(["resume", str(run_dir)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "success"


def _limit_file_size() -> None:
    limit = 12_000  # the smoke run's files are < 2 kB, its checkpoints ~19 kB
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_file_size_limit_in_a_real_process(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "csfl_fabric", "run", str(SMOKE), f"logging.dir={tmp_path}", *CKPT]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    (run_dir,) = (tmp_path / "smoke").iterdir()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"csfl-fabric: error: the file size limit was reached while writing `{run_dir / 'checkpoints' / 'round-000000'}"
        ".pt` (File too large); the last good checkpoint is none (no round was checkpointed yet); free space and run "
        "it again"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_global_generators_are_seeded_from_named_streams(tmp_path: Path) -> None:
    build_run(load_config(SMOKE, [f"logging.dir={tmp_path}"]), run_dir=tmp_path / "r")
    expected = random.Random(int(stream(0, "python").integers(2**63 - 1))).random()
    assert random.random() == expected
    assert np.random.random() == np.random.RandomState(int(stream(0, "numpy").integers(2**32 - 1))).random()


def test_a_plugin_using_the_global_generators_is_reproducible_and_resumable(tmp_path: Path, plugins: None) -> None:
    over = [f"logging.dir={tmp_path}", "selector.name=test.global_rng", "rounds.num_rounds=6", *CKPT]
    a = run(SMOKE, over).run_dir
    random.seed(123)  # whatever ran before in this process must not matter
    np.random.seed(123)
    b = run(SMOKE, over).run_dir
    other = run(SMOKE, [*over, "seed=1"]).run_dir
    with pytest.raises(RunInterrupted):
        run(SMOKE, over, callbacks=[StopAt(3)], run_dir=tmp_path / "stopped")
    resumed = resume(tmp_path / "stopped").run_dir
    selections = [(d / "selection.csv").read_text() for d in (a, b, other, resumed)]
    assert selections[0] == selections[1] == selections[3]
    assert selections[0] != selections[2]


def test_a_selector_breaking_its_contract_later_keeps_the_run(tmp_path: Path, plugins: None, capsys: Any) -> None:
    code = main(["run", str(SMOKE), f"logging.dir={tmp_path}", "selector.name=test.broken", "selector.mode=duplicate",
                 "selector.from_round=2", *CKPT])
    (run_dir,) = (tmp_path / "smoke").iterdir()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert line == (f"csfl-fabric: error: Selector `test.broken` in round 2: selected a client twice (returned ids "
                    f"[0, 0, 0, 0]); after fixing it, resume with: csfl-fabric resume {run_dir}")
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 2  # rounds 0 and 1 kept


def test_a_bug_keeps_its_traceback_and_says_what_to_resume(tmp_path: Path, plugins: None, capsys: Any) -> None:
    code = main(["run", str(SMOKE), f"logging.dir={tmp_path}", "selector.name=test.broken", "selector.mode=raise",
                 "selector.from_round=1", *CKPT])
    (run_dir,) = (tmp_path / "smoke").iterdir()
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert "ZeroDivisionError: division by zero" in err
    assert err.strip().splitlines()[-1] == (
        "csfl-fabric: unexpected ZeroDivisionError (a bug: please report it with the traceback above); once fixed, "
        f"resume with: csfl-fabric resume {run_dir}")

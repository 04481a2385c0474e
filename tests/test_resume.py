"""Kill-and-resume: a run killed with SIGKILL anywhere and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from csfl_fabric import SELECTORS, run
from csfl_fabric.api import resume
from csfl_fabric.cli import main
from csfl_fabric.engine.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from csfl_fabric.engine.resume import latest_checkpoint
from csfl_fabric.errors import RunInterrupted

from .conftest import REPO, SMOKE

NUM_ROUNDS, EVERY = 12, 3
# eval_every=2 widens metrics.csv's header after round 0, so truncating on resume is exercised too.
BASE = ["rounds.num_rounds=12", "rounds.clients_per_round=4", "rounds.eval_every=2", "checkpoint.every_n_rounds=3",
        "checkpoint.keep=2"]

# Runs the config through the API with a callback that SIGKILLs the process at (round, client) (at the round's end,
# before its row is logged, if fewer clients report), or, with client = -1, inside the fsync of the checkpoint
# written before `round` (data written, not yet renamed).
DRIVER = """
import os, signal, sys
import csfl_fabric.engine.files as ck
from csfl_fabric import run
kill_round, kill_client = int(sys.argv[1]), int(sys.argv[2])
def die(*_): os.kill(os.getpid(), signal.SIGKILL)
class Kill:
    def on_client_end(self, state, client_id):
        self.n = getattr(self, "n", 0) + 1 if state.round == kill_round else 0
        if state.round == kill_round and self.n == kill_client + 1: die()
    def on_round_end(self, state):
        if kill_client < 0 and state.round == kill_round - 1: ck.os.fsync = die
        if kill_client >= 0 and state.round == kill_round: die()  # fewer clients reported than kill_client
run(sys.argv[3], sys.argv[5:], callbacks=[Kill()], run_dir=sys.argv[4])
"""


def _final(run_dir: Path) -> tuple[bytes, dict[str, torch.Tensor], dict]:
    ckpt = load_checkpoint(latest_checkpoint(run_dir))  # type: ignore[arg-type]
    assert ckpt["state"]["round"] == NUM_ROUNDS
    # Wall time and the number of sessions differ between a resumed run and one that was never stopped.
    per_session = ("wall_seconds", "wall_seconds_session", "sessions")
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in per_session}
    return (run_dir / "metrics.csv").read_bytes(), ckpt["state"]["global_params"], summary


def _killed_then_resumed(tmp_path: Path, overrides: list[str], kill_round: int, kill_client: int) -> Path:
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", DRIVER, str(kill_round), str(kill_client), str(SMOKE), str(run_dir), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) - 1 >= kill_round  # rows past the checkpoint
    assert main(["resume", str(run_dir)]) == 0
    return run_dir


def _assert_same(a: Path, b: Path) -> None:
    csv_a, params_a, summary_a = _final(a)
    csv_b, params_b, summary_b = _final(b)
    assert csv_a == csv_b
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert summary_a == summary_b


# Oort runs with the simulated systems on (availability, dropouts, deadline, over-commitment), so the clock and
# the availability and dropout streams must be restored too.
SYSTEMS = ["systems.availability=bernoulli", "systems.dropout=0.2", "systems.deadline=1.5", "systems.overcommit=1.5"]


@pytest.mark.parametrize(
    ("selector", "aggregator", "extra"),
    [("heuristic.random", "fedavg", []), ("heuristic.pow_d", "fedavg", []), ("system.oort", "fedavg", SYSTEMS),
     ("heuristic.random", "fedadam", [])],
    ids=["random", "pow_d", "oort-systems", "random-fedadam"],
)
def test_sigkill_at_a_random_round_then_resume_is_bit_identical(
    tmp_path: Path, selector: str, aggregator: str, extra: list[str]
) -> None:
    # Prepare: a kill point drawn from a generator seeded by the case, so failures are reproducible.
    rng = np.random.default_rng(zlib.crc32(f"{selector}+{aggregator}".encode()))
    kill_round, kill_client = int(rng.integers(1, NUM_ROUNDS)), int(rng.integers(0, 4))
    overrides = [*BASE, f"selector.name={selector}", f"aggregator.name={aggregator}", "logging.wandb=disabled", *extra]
    # Execute: one run never interrupted, one killed mid-round and resumed from its latest checkpoint.
    reference = run(SMOKE, overrides, run_dir=tmp_path / "reference").run_dir
    resumed = _killed_then_resumed(tmp_path, overrides, kill_round, kill_client)
    # Assert
    _assert_same(reference, resumed)


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path: Path) -> None:
    overrides = [*BASE, "aggregator.name=fedadam", "logging.wandb=disabled"]
    reference = run(SMOKE, overrides, run_dir=tmp_path / "reference").run_dir
    # Killed inside the fsync of the checkpoint before round 9: the file of round 6 must be the latest one.
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", DRIVER, "9", "-1", str(SMOKE), str(run_dir), *overrides]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == -signal.SIGKILL
    ckdir = run_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(ckdir)] == ["round-000003.pt", "round-000006.pt"]
    assert (ckdir / ".round-000009.pt.tmp").exists()  # the half-finished write, never taken for a checkpoint
    assert load_checkpoint(latest_checkpoint(run_dir))["state"]["round"] == 6  # type: ignore[arg-type]
    assert main(["resume", str(run_dir)]) == 0
    _assert_same(reference, run_dir)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path / "round-000001.pt", {"round": 1})

    def half_write(obj: object, fh: object) -> None:
        fh.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "round-000002.pt", {"round": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-000001.pt"]
    assert load_checkpoint(tmp_path / "round-000001.pt")["state"] == {"round": 1}


def test_keeps_the_last_k_and_resume_auto_continues(tmp_path: Path, smoke: list[str]) -> None:
    over = [*smoke, "rounds.num_rounds=4", "checkpoint.every_n_rounds=1", "checkpoint.keep=2"]
    first = run(SMOKE, over)
    names = [p.name for p in list_checkpoints(first.run_dir / "checkpoints")]
    assert names == ["round-000003.pt", "round-000004.pt"]
    # resume=auto on the same experiment continues the finished run (here: extends it) in the same directory.
    wandb_id = (first.run_dir / "wandb_id").read_text()
    more = run(SMOKE, [*over, "rounds.num_rounds=6", "resume=auto"])
    assert more.run_dir == first.run_dir
    assert (more.run_dir / "wandb_id").read_text() == wandb_id  # W&B continues the same run
    assert [int(m["round"]) for m in more.metrics] == list(range(6))
    reference = run(SMOKE, [*smoke, "rounds.num_rounds=6"], run_dir=tmp_path / "ref")
    assert (reference.run_dir / "metrics.csv").read_bytes() == (more.run_dir / "metrics.csv").read_bytes()
    # Without resume=auto a second run never touches the first one's directory.
    assert run(SMOKE, over).run_dir != first.run_dir


class RoundCounter:
    """A callback with state: counts the rounds it has seen, across resumes."""

    def __init__(self) -> None:
        self.n = 0

    def on_round_end(self) -> None:
        self.n += 1

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n = state["n"]


def test_callback_and_component_state_survive_a_resume(smoke: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from csfl_fabric.engine.orchestrator import Orchestrator

    # A component registered in one line (as a systems model would be) is saved and restored with the rest.
    monkeypatch.setattr(Orchestrator, "STATEFUL", (*Orchestrator.STATEFUL, "extra"))
    monkeypatch.setattr(Orchestrator, "extra", RoundCounter(), raising=False)
    first = run(SMOKE, [*smoke, "rounds.num_rounds=3"], callbacks=[RoundCounter()])
    state = load_checkpoint(latest_checkpoint(first.run_dir))["state"]  # type: ignore[arg-type]
    assert state["callbacks"] == {"MemoryPolicies": {"RamGuard": {"cleanups": 0}}, "RoundCounter": {"n": 3}}
    assert state["components"]["extra"] == {"n": 0}
    assert state["summary"]["best_acc"] == first.summary["best_acc"]
    counter = RoundCounter()
    resume(first.run_dir, ["rounds.num_rounds=5"], callbacks=[counter])
    assert counter.n == 5  # 3 restored + 2 seen after the resume


class StopAt:
    """Asks the run to stop (as SIGTERM does) after the first client that reports in ``round`` or later."""

    def __init__(self, round_idx: int) -> None:
        self.round, self.orchestrator = round_idx, None

    def on_run_start(self, orchestrator: Any) -> None:
        self.orchestrator = orchestrator

    def on_client_end(self, state: Any) -> None:
        if state.round >= self.round:
            self.orchestrator.guard.request_stop(signal.SIGTERM)  # type: ignore[attr-defined]


@pytest.mark.parametrize("selector", SELECTORS.names())
def test_every_selector_resumes_exactly_in_process(tmp_path: Path, smoke: list[str], selector: str) -> None:
    # Contract over the registry, with the simulated systems on: a stop inside a round and a resume give the same
    # metrics.csv and params as no stop.
    over = [*smoke, "rounds.num_rounds=6", f"selector.name={selector}", *SYSTEMS]
    reference = run(SMOKE, over, run_dir=tmp_path / "reference")
    with pytest.raises(RunInterrupted):
        run(SMOKE, over, callbacks=[StopAt(3)], run_dir=tmp_path / "stopped")
    resumed = resume(tmp_path / "stopped")
    assert (resumed.run_dir / "metrics.csv").read_bytes() == (reference.run_dir / "metrics.csv").read_bytes()
    assert all(torch.equal(resumed.params[k], reference.params[k]) for k in reference.params)


class FailAfterRecord:
    """Raises at the end of ``round``: after the round's history record, before its row is logged."""

    def __init__(self, round_idx: int) -> None:
        self.round = round_idx

    def on_round_end(self, state: Any) -> None:
        if state.round == self.round:
            raise RuntimeError("a callback failed")


def test_a_run_that_fails_after_the_history_record_resumes_from_the_round_start(tmp_path: Path,
                                                                               smoke: list[str]) -> None:
    # The round-start snapshot leaves the per-client history out and undoes the round's record on saving it: the
    # resumed run must replay round 2 from exactly the state it started with.
    over = [*smoke, "rounds.num_rounds=4", *SYSTEMS]
    reference = run(SMOKE, over, run_dir=tmp_path / "reference")
    with pytest.raises(RuntimeError, match="a callback failed"):
        run(SMOKE, over, callbacks=[FailAfterRecord(2)], run_dir=tmp_path / "failed")
    saved = load_checkpoint(latest_checkpoint(tmp_path / "failed"))["state"]  # type: ignore[arg-type]
    assert saved["round"] == 2
    selected = sum(int(m["select/num_selected"]) for m in reference.metrics[:2])  # two rounds' worth, not three
    assert saved["history"]["times_selected"].sum() == selected
    resumed = resume(tmp_path / "failed")
    assert (resumed.run_dir / "metrics.csv").read_bytes() == (reference.run_dir / "metrics.csv").read_bytes()
    assert all(torch.equal(resumed.params[k], reference.params[k]) for k in reference.params)


def test_numpy_arrays_in_a_checkpoint_come_back_as_they_were(tmp_path: Path) -> None:
    # Written as tensors on the arrays' memory (no pickled copy), read back as arrays of the same dtype and shape.
    state = {"a": np.arange(5), "nested": [np.ones(3, dtype=np.float16), (np.array([True, False]),)],
             "u": np.array([1, 2], dtype=np.uint32), "scalar": np.array(3.5), "strided": np.arange(10)[::-2],
             "readonly": np.frombuffer(b"\x01\x02", dtype=np.uint8), "text": np.array(["x"]),
             "rng": np.random.MT19937(0).state, "marker_like": {"__numpy_array__": 1, "other": 2}}
    save_checkpoint(tmp_path / "round-000001.pt", state)
    back = load_checkpoint(tmp_path / "round-000001.pt")["state"]

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, np.ndarray):
            return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
        return bool(a == b)

    assert same(state, back)

"""SIGINT/SIGTERM: finish the current client, checkpoint, say how to resume, exit 130/143; the resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from csfl_fabric import run
from csfl_fabric.api import resume
from csfl_fabric.build import run_name
from csfl_fabric.config import load_config
from csfl_fabric.engine.checkpoint import load_checkpoint
from csfl_fabric.engine.resume import latest_checkpoint
from csfl_fabric.errors import RunInterrupted

from .conftest import REPO, SMOKE


class SignalAt:
    """Sends ``signum`` to this process when the second client of ``round`` ends; counts clients started."""

    def __init__(self, round_idx: int, signum: int) -> None:
        self.round, self.signum, self.started = round_idx, signum, 0

    def on_client_start(self, state: Any) -> None:
        self.started += state.round == self.round

    def on_client_end(self, state: Any) -> None:
        if state.round == self.round and self.started == 2:
            os.kill(os.getpid(), self.signum)


def test_sigterm_finishes_the_client_checkpoints_and_resumes_exactly(tmp_path: Path, smoke: list[str]) -> None:
    over = [*smoke, "rounds.num_rounds=5"]
    reference = run(SMOKE, over, run_dir=tmp_path / "reference")
    handler_before = signal.getsignal(signal.SIGTERM)
    stopper = SignalAt(round_idx=2, signum=signal.SIGTERM)
    with pytest.raises(RunInterrupted) as info:
        run(SMOKE, over, callbacks=[stopper], run_dir=tmp_path / "stopped")
    # Stopped at the client boundary after the signal: no third client started; handlers restored.
    assert (info.value.exit_code, stopper.started) == (143, 2)
    assert signal.getsignal(signal.SIGTERM) is handler_before
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "stopped"))  # type: ignore[arg-type]
    assert ckpt["state"]["round"] == 2  # the interrupted round is replayed from its start
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["status"] == "interrupted"
    resumed = resume(tmp_path / "stopped")
    assert (resumed.run_dir / "metrics.csv").read_bytes() == (reference.run_dir / "metrics.csv").read_bytes()


def test_ctrl_c_on_the_cli_exits_130_with_a_resume_hint(tmp_path: Path, smoke: list[str]) -> None:
    over = [*smoke, "rounds.num_rounds=5000"]
    run_dir = tmp_path / "runs" / "smoke" / run_name(load_config(SMOKE, over))  # the CLI's default folder
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "csfl_fabric", "run", str(SMOKE), *over]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _rows(run_dir) >= 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"Resume with: csfl-fabric resume {run_dir}" in err.splitlines()[-1]
    # The checkpoint and metrics.csv agree on where the run stands.
    stopped_at = load_checkpoint(latest_checkpoint(run_dir))["state"]["round"]  # type: ignore[arg-type]
    assert stopped_at == _rows(run_dir) >= 2


def _rows(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    return max(len(path.read_text().splitlines()) - 1, 0) if path.exists() else 0

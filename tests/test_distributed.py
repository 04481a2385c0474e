from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from csfl_fabric import cli, run
from csfl_fabric.config import load_config
from csfl_fabric.engine.distributed import FederatedDDPStrategy, fabric_strategy, split_clients
from csfl_fabric.errors import ConfigError, RankFailureError

from .conftest import REPO, SMOKE
from .distributed_run import FailingRecorder

SCRIPT = REPO / "tests" / "distributed_run.py"
# An odd cohort of uneven Dirichlet clients, so that the two ranks train different numbers of clients and batches.
OVERRIDES = ["rounds.clients_per_round=5", "fabric.accelerator=cpu"]
# Adaptive selectors whose next selection depends on what the ranks gather: Oort on the results (here with
# offline and dropped clients), DivFL on the clients' updates.
ADAPTIVE = {"oort": ["selector.name=system.oort", "systems.availability=bernoulli", "systems.availability_p=0.8",
                     "systems.dropout=0.2"],
            "divfl": ["selector.name=learning.divfl"]}


def _launch(out: Path, *args: str, wandb: str = "disabled") -> subprocess.Popen[str]:
    # Fabric starts rank 1 by running the same command again, so rank 0's output pipe collects both ranks.
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": wandb}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args, *OVERRIDES, "fabric.devices=2",
                             f"logging.dir={out / 'runs'}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _max_load(sizes: list[int], shares: list[list[int]]) -> int:
    return max(sum(sizes[i] for i in share) for share in shares)


def test_split_clients_is_a_balanced_partition_of_the_positions() -> None:
    sizes = [30, 5, 22, 17, 9, 9, 40, 1]
    shares = split_clients(sizes, world_size=3)
    assert sorted(itertools.chain(*shares)) == list(range(len(sizes)))
    assert all(share == sorted(share) for share in shares)
    # By hand: 40, 30, 22 open the ranks; 17 -> rank 2 (39); 9 -> rank 1 (39); 9 -> rank 1 (tie, lower rank: 48);
    # 5 -> rank 2 (44); 1 -> rank 0 (41).
    assert shares == [[6, 7], [0, 4, 5], [1, 2, 3]]
    # Greedy LPT is within 4/3 of the best split (Graham 1969); brute force finds 47 here.
    best = min(_max_load(sizes, [[i for i in range(8) if a[i] == r] for r in range(3)])
               for a in itertools.product(range(3), repeat=8))
    assert best == 47
    assert _max_load(sizes, shares) == 48 <= 4 / 3 * best
    assert split_clients(sizes, world_size=1) == [list(range(8))]


def test_ddp_strategy_leaves_the_model_unwrapped() -> None:
    strategy = fabric_strategy("ddp", devices=1, num_nodes=1, timeout_s=7.0, startup_timeout_s=60.0)
    assert isinstance(strategy, FederatedDDPStrategy)
    assert strategy.timeout_s == 7.0
    model = nn.Linear(2, 2)
    assert strategy.setup_module(model) is model  # no DistributedDataParallel: no gradient all-reduce
    assert isinstance(fabric_strategy("auto", devices=2, num_nodes=1, timeout_s=1, startup_timeout_s=1),
                      FederatedDDPStrategy)
    assert fabric_strategy("auto", devices=1, num_nodes=1, timeout_s=1, startup_timeout_s=1) == "auto"


@pytest.mark.parametrize(("override", "key"), [("fabric.strategy=fsdp", "fabric.strategy"),
                                               ("fabric.timeout_s=0", "fabric.timeout_s")])
def test_bad_distributed_settings_are_config_errors(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(SMOKE, [override])


def test_cli_reports_a_failed_rank_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    message = "Rank 0: the all-reduce of the client sums in round 3 failed"

    def failing_run(*args: object, **kwargs: object) -> None:
        raise RankFailureError(message)

    monkeypatch.setattr("csfl_fabric.api.run", failing_run)
    assert cli.main(["run", str(SMOKE)]) == 1
    assert capsys.readouterr().err == f"csfl-fabric: error: {message}\n"


@pytest.mark.parametrize("selector", sorted(ADAPTIVE))
def test_two_processes_match_one_process(tmp_path: Path, selector: str) -> None:
    # Prepare: the same config in one process (here) and in two (gloo), W&B offline in the latter. Of the 3 rounds
    # only 2 run: the last rank asks to stop after round 1 (in two processes rank 1, and rank 0 must follow).
    recorder = FailingRecorder(tmp_path, stop_round=1)
    single = run(SMOKE, [*OVERRIDES, *ADAPTIVE[selector], f"logging.dir={tmp_path / 'single'}"], callbacks=[recorder])
    out = tmp_path / "two"
    out.mkdir()

    # Execute
    proc = _launch(out, "--stop-round", "1", *ADAPTIVE[selector], wandb="offline")
    output, _ = proc.communicate(timeout=300)

    # Assert: identical selections, final params within 1e-5 (summation order differs), the same on both ranks.
    assert proc.returncode == 0, output
    ranks = [torch.load(out / f"rank{k}.pt") for k in range(2)]
    for rank in ranks:
        assert rank["selections"] == recorder.selections
        for key, value in single.params.items():
            torch.testing.assert_close(rank["params"][key], value, atol=1e-5, rtol=0)
        assert rank["summary"]["rounds_completed"] == single.summary["rounds_completed"] == 2
    for key in single.params:
        assert torch.equal(ranks[0]["params"][key], ranks[1]["params"][key])
    # Only rank 0 wrote the run: one run directory, one row per round, one W&B run; rank 1 read nothing back.
    runs = list((out / "runs" / "smoke").iterdir())
    assert [p.name for p in runs] == [Path(ranks[0]["run_dir"]).name]
    assert ranks[1]["run_dir"] == ranks[0]["run_dir"]
    assert {p.name for p in runs[0].iterdir()} == {p.name for p in single.run_dir.iterdir()} | {"wandb"}
    assert len((runs[0] / "metrics.csv").read_text().splitlines()) == 1 + 2
    assert len(list((runs[0] / "wandb").glob("offline-run-*"))) == 1
    assert (ranks[0]["num_metrics"], ranks[1]["num_metrics"]) == (2, 0)
    assert [r["summary"]["stop_reason"] for r in ranks] == ["stop requested on another rank", "asked on rank 1"]


def test_a_killed_rank_stops_the_other_with_an_error(tmp_path: Path) -> None:
    # Rank 0 (which also hosts the rendezvous) is killed with SIGKILL at the start of round 1. Rank 1 meets the dead
    # peer in round 1's all-reduce and must fail at once with a message. (Killing rank 1 instead would race the
    # launcher's watchdog in rank 0, which SIGKILLs rank 0 too when a child dies, every 5 s.)
    proc = _launch(tmp_path, "--fail-rank", "0", "--fail-how", "kill")
    output, _ = proc.communicate(timeout=300)  # returns when rank 1, which holds the pipe too, has exited
    ended = time.time()

    assert proc.returncode == -9
    assert "RankFailureError: Rank 1: the all-reduce of the client sums in round 1 failed" in output
    assert not list(tmp_path.glob("rank*.pt"))
    # Bounded: a dead peer is noticed at once (a generous bound for this shared 2-core machine).
    assert ended - float((tmp_path / "killed_at").read_text()) < 30


def test_a_hung_rank_makes_the_other_time_out(tmp_path: Path) -> None:
    # Rank 1 hangs for 3 x timeout_s at the start of round 1: rank 0 gives up on round 1's all-reduce after
    # fabric.timeout_s, and rank 1, when it wakes up, finds rank 0 gone and fails too instead of waiting.
    proc = _launch(tmp_path, "--fail-rank", "1", "--fail-how", "hang", "fabric.timeout_s=3")
    output, _ = proc.communicate(timeout=300)

    assert proc.returncode == 1
    assert "RankFailureError: Rank 0: the all-reduce of the client sums in round 1 failed" in output
    assert "fabric.timeout_s=3.0 s" in output
    assert "Timed out" in output
    assert "RankFailureError: Rank 1: the all-reduce of the client sums in round 1 failed" in output
    assert not list(tmp_path.glob("rank*.pt"))
    summary = next((tmp_path / "runs").rglob("summary.json")).read_text()
    assert '"status": "failed"' in summary

"""W&B compares methods out of the box: a group per method, study tags, one selection table a run, no empty sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import wandb

import csfl_fabric
from csfl_fabric.study.compare import plan
from tests.conftest import SMOKE

METHODS = ["heuristic.random", "heuristic.round_robin"]


@pytest.fixture
def inits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Offline W&B, with the arguments of every `wandb.init` recorded."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen: list[dict[str, Any]] = []
    real_init = wandb.init

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", spy)
    return seen


def test_a_comparison_is_a_w_and_b_group_per_method(tmp_path: Path, inits: list[dict[str, Any]]) -> None:
    result = csfl_fabric.compare(SMOKE, methods=METHODS, seeds=[0], overrides=[f"logging.dir={tmp_path}",
                                                                                "rounds.num_rounds=2"])
    assert [(k["group"], k["job_type"], k["tags"]) for k in inits] == [
        (f"smoke/{m}", m, ["smoke", m, "seed0"]) for m in METHODS]
    selector = inits[0]["config"]["selector"]
    assert "import" in selector
    assert "module" not in selector  # the config under the names the user writes
    (offline,) = (result.runs[0][0].run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = offline.read_bytes()
    assert b"by_sim_time/eval_acc" in data  # accuracy against simulated time, next to accuracy against round
    assert b"time/sim_total_s" in data


def test_a_sweep_point_has_its_own_group_and_tags(tmp_path: Path) -> None:
    _, specs = plan(SMOKE, [f"logging.dir={tmp_path}"], ["heuristic.random"], [0, 1], {"train.lr": [0.1, 0.2]})
    assert [(s.config.logging.group, s.config.logging.tags) for s in specs] == [
        (f"smoke/heuristic.random train.lr={lr}", ["heuristic.random", f"seed{seed}", f"train.lr={lr}"])
        for lr in (0.1, 0.2) for seed in (0, 1)]


def _tables(run_dir: Path) -> list[tuple[str, list[list[Any]]]]:
    """Each offline session's directory name and its selection table rows."""
    out = []
    for session in sorted((run_dir / "wandb").glob("offline-run-*")):
        for path in session.glob("files/media/table/select/clients*.table.json"):
            out.append((session.name, json.loads(path.read_text())["data"]))
    return out


def test_a_resumed_run_logs_one_whole_selection_table_and_no_empty_session(tmp_path: Path,
                                                                          inits: list[dict[str, Any]]) -> None:
    # Prepare: a 2-round run, then extended to 3 rounds by a resume.
    first = csfl_fabric.run(SMOKE, [f"logging.dir={tmp_path}", "rounds.num_rounds=2"])
    csfl_fabric.resume(first.run_dir, ["rounds.num_rounds=3"])
    sessions = sorted((first.run_dir / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2
    assert inits[0]["id"] == inits[1]["id"]  # the same W&B run, continued

    # Assert: the last session's table has every round's selection once (4 clients a round), in order.
    tables = _tables(first.run_dir)
    last = [rows for name, rows in tables if name == sessions[-1].name]
    assert len(last) == 1
    assert [row[0] for row in last[0]] == [0] * 4 + [1] * 4 + [2] * 4
    selected = [line.split(",")[1].split() for line in (first.run_dir / "selection.csv").read_text().splitlines()[1:]]
    assert [str(row[1]) for row in last[0]] == [c for ids in selected for c in ids]

    # Execute/Assert: resuming the finished run runs no round and starts no W&B session.
    csfl_fabric.resume(first.run_dir)
    assert len(list((first.run_dir / "wandb").glob("offline-run-*"))) == 2
    assert len(inits) == 2

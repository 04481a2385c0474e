from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from csfl_fabric import run
from csfl_fabric.callbacks import HOOKS

from .conftest import SMOKE


class Recorder:
    """Records every hook call with the keyword arguments it received."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_run_start(self, state: Any) -> None:
        self.calls.append(("on_run_start", None))

    def on_round_start(self, state: Any) -> None:
        self.calls.append(("on_round_start", state.round))

    def on_selection(self, state: Any, selection: Any) -> None:
        self.calls.append(("on_selection", len(selection.ids)))

    def on_client_start(self, state: Any, client_id: int) -> None:
        self.calls.append(("on_client_start", client_id))

    def on_client_end(self, state: Any, client_id: int, result: Any) -> None:
        assert result.client_id == client_id
        self.calls.append(("on_client_end", client_id))

    def on_round_end(self, state: Any, metrics: dict[str, float]) -> None:
        metrics["custom/added"] = 1.0
        self.calls.append(("on_round_end", state.round))

    def on_run_end(self, state: Any) -> None:
        self.calls.append(("on_run_end", None))


def test_exact_hook_order_of_a_two_round_run(smoke: list[str]) -> None:
    rec = Recorder()
    result = run(SMOKE, [*smoke, "rounds.num_rounds=2", "rounds.clients_per_round=3"], callbacks=[rec])
    names = [name for name, _ in rec.calls]
    per_round = ["on_round_start", "on_selection", *["on_client_start", "on_client_end"] * 3, "on_round_end"]
    assert names == ["on_run_start", *per_round, *per_round, "on_run_end"]
    assert set(names) == set(HOOKS)
    # Each client's start and end name the same client, and a callback's metric reaches metrics.csv.
    clients = [arg for name, arg in rec.calls if name in ("on_client_start", "on_client_end")]
    assert clients[0::2] == clients[1::2]
    assert [m["custom/added"] for m in result.metrics] == [1.0, 1.0]


def test_stop_request_ends_the_run(smoke: list[str]) -> None:
    class StopAfterOne:
        def on_round_end(self, state: Any) -> None:
            state.should_stop = True
            state.stop_reason = "test"

    result = run(SMOKE, [*smoke, "rounds.num_rounds=5"], callbacks=[StopAfterOne()])
    assert len(result.metrics) == 1
    assert result.summary["rounds_completed"] == 1
    assert result.summary["stop_reason"] == "test"


def test_run_directory_contents(smoke: list[str]) -> None:
    result = run(SMOKE, [*smoke, "rounds.num_rounds=2", "rounds.eval_every=2"])
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "timing.csv", "summary.json"} <= files
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("round", "train/loss", "eval/acc", "eval/loss", "eval/f1", "select/num_selected"):
        assert key in header
    assert "eval/acc" not in result.metrics[0]  # evaluated only every 2 rounds
    assert result.metrics[1]["select/num_selected"] == 4
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["final_acc"] == result.metrics[-1]["eval/acc"]
    assert summary["status"] == "success"
    assert "time/wall_round_s" in (result.run_dir / "timing.csv").read_text()


def test_same_seed_gives_identical_metrics_csv(tmp_path: Path) -> None:
    a = run(SMOKE, [f"logging.dir={tmp_path / 'a'}"])
    b = run(SMOKE, [f"logging.dir={tmp_path / 'b'}"])
    assert (a.run_dir / "metrics.csv").read_bytes() == (b.run_dir / "metrics.csv").read_bytes()
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key])
    c = run(SMOKE, [f"logging.dir={tmp_path / 'c'}", "seed=1"])
    assert (a.run_dir / "metrics.csv").read_bytes() != (c.run_dir / "metrics.csv").read_bytes()


def test_existing_run_directory_is_never_overwritten(smoke: list[str]) -> None:
    first = run(SMOKE, [*smoke, "rounds.num_rounds=1"])
    second = run(SMOKE, [*smoke, "rounds.num_rounds=1"])
    assert first.run_dir != second.run_dir
    assert (first.run_dir / "metrics.csv").exists()

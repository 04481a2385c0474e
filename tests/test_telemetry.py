from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from csfl_fabric import run
from csfl_fabric.engine.loggers import WandbLogger
from csfl_fabric.engine.telemetry import jain_index, never_selected_fraction, participation_summary
from csfl_fabric.state import ClientHistory, ClientResult, Selection

from .conftest import SMOKE


@pytest.mark.parametrize("seed", range(5))
def test_jain_index_equals_its_closed_form_in_the_coefficient_of_variation(seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 20, size=50)
    cv = x.std() / x.mean()  # population std: J = 1 / (1 + cv^2)
    assert jain_index(x) == pytest.approx(1 / (1 + cv**2))


def test_jain_index_bounds_and_undefined_case() -> None:
    assert jain_index([7, 7, 7]) == 1.0
    assert jain_index([0, 0, 9, 0, 0]) == pytest.approx(1 / 5)
    assert np.isnan(jain_index([0, 0]))
    assert np.isnan(jain_index([]))
    assert never_selected_fraction([0, 1, 0, 0]) == 0.75


def _result(client_id: int) -> ClientResult:
    return ClientResult(client_id=client_id, num_samples=1, num_steps=1, samples_processed=1, loss=0.5,
                        loss_sq_sum=0.25)


def test_history_counts_duplicates_and_round_trips() -> None:
    h = ClientHistory(np.ones(4, dtype=np.int64))
    h.record(0, [_result(1), _result(1)], np.array([1, 1, 2]), dropped=np.array([2]))
    h.record(1, [_result(3)])
    assert h.times_selected.tolist() == [0, 2, 1, 1]
    assert h.times_completed.tolist() == [0, 2, 0, 1]
    assert h.times_dropped.tolist() == [0, 0, 1, 0]
    assert h.last_round.tolist() == [-1, 0, -1, 1]
    q = ClientHistory(np.ones(4, dtype=np.int64))
    q.load_state_dict(h.state_dict())
    assert participation_summary(q) == participation_summary(h)
    assert participation_summary(h)["participation/never_selected_frac"] == 0.25


def test_run_writes_participation_csv_and_fairness_to_the_summary(smoke: list[str]) -> None:
    result = run(SMOKE, [*smoke, "rounds.num_rounds=4", "systems.dropout=0.3"])
    with (result.run_dir / "participation.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    selected = np.array([int(r["selected"]) for r in rows])
    completed = np.array([int(r["completed"]) for r in rows])
    assert len(rows) == 10
    assert selected.sum() == sum(m["select/num_selected"] for m in result.metrics)
    assert (selected - completed).sum() == sum(m["select/num_dropped"] for m in result.metrics)
    assert result.summary["participation/jain_selected"] == pytest.approx(jain_index(selected))
    assert result.summary["participation/never_selected_frac"] == never_selected_fraction(selected)


class FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def log(self, data: dict[str, Any]) -> None:
        self.logged.append(data)

    def finish(self, exit_code: int = 0) -> None:
        pass


def test_wandb_logger_logs_one_table_of_selected_clients(tmp_path: Path) -> None:
    logger = WandbLogger("offline", "p", tmp_path)
    fake = FakeRun()
    logger._run = fake
    logger.log_selection(0, Selection(ids=np.array([4, 2]), scores=np.array([0.5, 0.25])), np.array([1.0, 2.0]),
                         ("kept", "late"))
    logger.log_selection(1, Selection(ids=np.array([3])), np.array([3.0]), ("dropout",))
    logger.finalize("success")
    (entry,) = fake.logged
    table = entry["select/clients"]
    assert table.columns == ["round", "client_id", "score", "prob", "sim_duration_s", "status"]
    assert table.data == [[0, 4, 0.5, None, 1.0, "kept"], [0, 2, 0.25, None, 2.0, "late"],
                          [1, 3, None, None, 3.0, "dropout"]]
    assert entry["round"] == 1

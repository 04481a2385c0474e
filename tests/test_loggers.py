from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from csfl_fabric.engine.loggers import CSVMetricsLogger, WandbLogger, read_metrics


def test_csv_rows_flush_every_round_and_header_grows(tmp_path: Path) -> None:
    logger = CSVMetricsLogger(tmp_path)
    logger.log_metrics({"train/loss": 1.5, "time/wall_round_s": 0.1}, step=0)
    # Readable before the run ends: a killed run keeps every finished round.
    assert read_metrics(tmp_path) == [{"round": 0.0, "train/loss": 1.5}]
    logger.log_metrics({"train/loss": 1.25, "eval/acc": 0.5, "time/wall_round_s": 0.2}, step=1)
    logger.finalize("success")
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["round,train/loss,eval/acc", "0,1.5,", "1,1.25,0.5"]
    assert (tmp_path / "timing.csv").read_text().splitlines() == ["round,time/wall_round_s", "0,0.1", "1,0.2"]


def test_csv_truncate_drops_rows_from_a_round_on(tmp_path: Path) -> None:
    logger = CSVMetricsLogger(tmp_path)
    for r in range(4):
        logger.log_metrics({"x": float(r)}, step=r)
    logger.truncate(2)
    logger.log_metrics({"x": 9.0}, step=2)
    logger.finalize("success")
    assert [row["x"] for row in read_metrics(tmp_path)] == [0.0, 1.0, 9.0]


def test_floats_round_trip_exactly(tmp_path: Path) -> None:
    logger = CSVMetricsLogger(tmp_path)
    value = 0.1 + 0.2
    logger.log_metrics({"v": value}, step=0)
    logger.finalize("success")
    assert read_metrics(tmp_path)[0]["v"] == value


def test_wandb_online_failure_falls_back_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    modes: list[str] = []

    class FakeRun:
        id = "abc"

        def define_metric(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log(self, data: dict[str, Any]) -> None:
            self.logged = data

    def fake_init(mode: str, **kwargs: Any) -> FakeRun:
        modes.append(mode)
        if mode == "online":
            raise wandb.errors.UsageError("No API key configured.")
        return FakeRun()

    monkeypatch.setattr(wandb, "init", fake_init)
    logger = WandbLogger("online", "proj", tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.log_metrics({"eval/acc": 0.5}, step=3)
    assert modes == ["online", "offline"]
    assert logger.mode == "offline"
    assert len([w for w in caught if "logging offline instead" in str(w.message)]) == 1
    assert logger.experiment.logged == {"eval/acc": 0.5, "round": 3}


def test_wandb_offline_run_writes_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = WandbLogger("offline", "proj", tmp_path, config={"seed": 0}, name="t")
    logger.log_metrics({"eval/acc": 0.5}, step=0)
    logger.finalize("success")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].glob("*.wandb"))


def test_environment_mode_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger("online", "proj", tmp_path).mode == "disabled"


def test_memory_readings_go_to_system_csv_not_metrics_csv(tmp_path: Path) -> None:
    logger = CSVMetricsLogger(tmp_path)
    logger.log_metrics({"train/loss": 1.0, "mem/process_gb": 0.5, "time/wall_round_s": 0.1}, step=0)
    logger.log_metrics({"train/loss": 0.5, "time/wall_round_s": 0.2}, step=1)  # a round without readings
    logger.log_metrics({"train/loss": 0.25, "mem/process_gb": 0.75, "mem/emergency_cleanups": 1.0}, step=2)
    logger.finalize("success")
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["round,train/loss", "0,1.0", "1,0.5", "2,0.25"]
    assert (tmp_path / "system.csv").read_text().splitlines() == [
        "round,mem/process_gb,mem/emergency_cleanups", "0,0.5,", "2,0.75,1.0"]

"""No W&B failure ends a run: online without network falls back offline (a fresh id, as W&B requires), a failing
call mid-run falls back too, and when nothing works the run goes on without W&B; one warning each time."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from csfl_fabric import run
from csfl_fabric.engine.loggers import WandbLogger

from .conftest import SMOKE


class FakeRun:
    """Records what is logged; ``fail_logs`` makes the first calls to `log` raise (a W&B process that died)."""

    def __init__(self, mode: str, run_id: str | None, fail_logs: int = 0) -> None:
        self.mode, self.id, self.fail_logs, self.logged = mode, run_id, fail_logs, []  # type: ignore[var-annotated]

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        """Accept the step-metric definitions."""

    def log(self, data: dict[str, Any]) -> None:
        if self.fail_logs:
            self.fail_logs -= 1
            raise BrokenPipeError("wandb-core went away")
        self.logged.append(data)

    def finish(self, exit_code: int = 0) -> None:
        self.finished = exit_code


def _fake_init(monkeypatch: pytest.MonkeyPatch, refuse: set[str], runs: list[FakeRun], fail_logs: int = 0) -> None:
    """``wandb.init`` that fails for the (mode, same id?) attempts in ``refuse``, as W&B does without network."""
    import wandb

    def init(mode: str, id: str | None = None, **kwargs: Any) -> FakeRun:  # noqa: A002 - wandb's own name
        key = f"{mode}:{'same' if id == 'orig1234' else 'fresh' if id else 'none'}"
        if key in refuse:
            raise wandb.errors.CommError("context deadline exceeded") if mode == "online" else \
                wandb.errors.Error(f"run ID {id} is in use")
        runs.append(FakeRun(mode, id, fail_logs if not runs else 0))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def _logger(tmp_path: Path, mode: str = "online") -> WandbLogger:
    (tmp_path / "wandb_id").write_text("orig1234\n")
    return WandbLogger(mode, "proj", tmp_path, run_id="orig1234")


def test_online_without_network_goes_offline_with_a_fresh_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[FakeRun] = []
    _fake_init(monkeypatch, {"online:same", "offline:same"}, runs)
    logger = _logger(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.log_metrics({"eval/acc": 0.5}, step=0)
        logger.log_metrics({"eval/acc": 0.6}, step=1)
    (run_,) = runs
    assert (run_.mode, logger.mode) == ("offline", "offline")
    assert run_.id != "orig1234"
    assert len(run_.id) == 8  # type: ignore[arg-type]
    assert (tmp_path / "wandb_id").read_text() == f"{run_.id}\n"  # a resume continues the offline run
    assert run_.logged == [{"eval/acc": 0.5, "round": 0}, {"eval/acc": 0.6, "round": 1}]
    (warning,) = [str(w.message) for w in caught]
    assert "online: CommError: context deadline exceeded" in warning
    assert "offline: Error: run ID orig1234 is in use" in warning
    assert f"logging offline instead (run id {run_.id})" in warning


def test_a_failing_call_mid_run_goes_offline_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[FakeRun] = []
    _fake_init(monkeypatch, set(), runs, fail_logs=1)
    logger = _logger(tmp_path)
    logger.experiment  # noqa: B018 - started online, fine
    with pytest.warns(UserWarning, match="W&B failed mid-run \\(BrokenPipeError: wandb-core went away\\); continuing "
                                         "offline"):
        logger.log_metrics({"eval/acc": 0.5}, step=4)
    online, offline = runs
    assert (online.mode, online.finished, offline.mode) == ("online", 1, "offline")
    assert offline.logged == [{"eval/acc": 0.5, "round": 4}]  # the failed call was not lost


def test_when_nothing_works_the_run_goes_on_without_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[FakeRun] = []
    _fake_init(monkeypatch, {"online:same", "offline:same", "offline:fresh"}, runs)
    logger = _logger(tmp_path)
    with pytest.warns(UserWarning, match="W&B is off for the rest of this run"):
        logger.log_metrics({"eval/acc": 0.5}, step=0)
    logger.set_summary({"best_acc": 0.5})
    logger.finalize("success")
    assert [r.mode for r in runs] == ["disabled"]


def test_a_run_with_wandb_online_and_no_network_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    real = wandb.init

    def no_network(mode: str, **kwargs: Any) -> Any:
        if mode == "online":  # what a logged-in researcher gets on a compute node without internet
            raise wandb.errors.CommError("context deadline exceeded")
        return real(mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", no_network)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    started = time.monotonic()
    with pytest.warns(UserWarning, match="logging offline instead") as caught:
        result = run(SMOKE, [f"logging.dir={tmp_path}", "logging.wandb=online"])
    assert time.monotonic() - started < 120
    assert len([w for w in caught if "W&B" in str(w.message)]) == 1
    assert json.loads((result.run_dir / "summary.json").read_text())["status"] == "success"
    (offline,) = (result.run_dir / "wandb").glob("offline-run-*")
    assert offline.name.endswith((result.run_dir / "wandb_id").read_text().strip())

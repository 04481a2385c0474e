"""Fault isolation: NaN/inf clients and failing clients are left out; a round with no usable client stops the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from csfl_fabric.build import build_run
from csfl_fabric.cli import main
from csfl_fabric.config import load_config
from csfl_fabric.engine.checkpoint import load_checkpoint
from csfl_fabric.engine.guard import ClientGuard
from csfl_fabric.engine.loggers import read_metrics
from csfl_fabric.engine.resume import latest_checkpoint
from csfl_fabric.errors import RunFailed

from .conftest import SMOKE


def _one_round(tmp_path: Path, smoke: list[str], spoil: Callable[[int, Any], Any], on_divergence: str = "skip",
               ) -> tuple[Any, list[tuple[int, dict[str, torch.Tensor], float]]]:
    """A one-round run whose second client is spoiled by ``spoil(client_id, params)``; records every fit."""
    cfg = load_config(SMOKE, [*smoke, "rounds.num_rounds=1", f"train.on_divergence={on_divergence}"])
    built = build_run(cfg, run_dir=tmp_path / "run")
    built.run_dir.mkdir()
    orch = built.orchestrator
    cleanups: list[int] = []
    orch.guard = ClientGuard(on_divergence, cleanup=lambda: cleanups.append(1))
    fits: list[tuple[int, dict[str, torch.Tensor], float]] = []
    fit = orch.trainer.fit

    def recording_fit(global_params: Any, client: Any) -> Any:
        params, result = fit(global_params, client)
        fits.append((client.client_id, {k: v.clone() for k, v in params.items()}, float(client.num_samples)))
        return spoil(client.client_id, params) if len(fits) == 2 else (params, result)

    orch.trainer.fit = recording_fit  # type: ignore[method-assign]
    orch.cleanups = cleanups  # type: ignore[attr-defined]
    return orch, fits


def _mean_without_second(fits: list[tuple[int, dict[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    kept = [f for i, f in enumerate(fits) if i != 1]
    total = sum(w for _, _, w in kept)
    return {k: sum(p[k].double() * w for _, p, w in kept) / total for k in kept[0][1]}  # type: ignore[misc]


def test_nan_client_is_left_out_with_one_warning(tmp_path: Path, smoke: list[str]) -> None:
    def nan_params(client_id: int, params: Any) -> Any:
        raise_nan = {k: torch.full_like(v, float("nan")) for k, v in params.items()}
        return raise_nan, _result(client_id, loss=0.5)

    orch, fits = _one_round(tmp_path, smoke, nan_params)
    with pytest.warns(RuntimeWarning, match="diverged") as caught:
        orch.run()
    assert [str(w.message).split(" diverged")[0] for w in caught] == [f"Client {fits[1][0]} in round 0"]
    expected = _mean_without_second(fits)
    assert all(torch.allclose(orch.global_params[k].double(), expected[k], atol=1e-6) for k in expected)
    row = read_metrics(orch.run_dir)[0]
    assert (row["train/diverged_clients"], row["train/failed_clients"]) == (1.0, 0.0)
    assert orch.state.history.times_completed.sum() == 3  # the diverged client did not complete


def test_nan_loss_aborts_when_asked(tmp_path: Path, smoke: list[str]) -> None:
    orch, _ = _one_round(tmp_path, smoke, lambda cid, params: (params, _result(cid, loss=float("inf"))), "abort")
    with pytest.raises(RunFailed, match="on_divergence"):
        orch.run()


def test_failing_client_is_cleaned_up_logged_and_skipped(tmp_path: Path, smoke: list[str]) -> None:
    def oom(client_id: int, params: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    orch, fits = _one_round(tmp_path, smoke, oom)
    with pytest.warns(RuntimeWarning, match=r"Client \d+ in round 0 failed \(RuntimeError: CUDA out of memory"):
        orch.run()
    assert orch.cleanups == [1]  # type: ignore[attr-defined]
    expected = _mean_without_second(fits)
    assert all(torch.allclose(orch.global_params[k].double(), expected[k], atol=1e-6) for k in expected)
    assert read_metrics(orch.run_dir)[0]["train/failed_clients"] == 1.0


def test_round_without_any_usable_client_stops_with_a_checkpoint(smoke: list[str], capsys: Any) -> None:
    # lr=1e30 makes every client's params overflow: nothing left to aggregate in round 0.
    with pytest.warns(RuntimeWarning, match="diverged"):
        code = main(["run", str(SMOKE), *smoke, "train.lr=1e30", "rounds.num_rounds=3"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Every client of round 0 failed (0) or diverged (4)" in err
    assert "csfl-fabric resume" in err
    assert "A resume may change only resume, logging, checkpoint, memory, rounds.num_rounds, callbacks" in err
    assert len(err.strip().splitlines()) == 1
    run_dir = Path(err.rsplit("resume ", 1)[1].strip())
    state = load_checkpoint(latest_checkpoint(run_dir))["state"]  # type: ignore[arg-type]
    assert state["round"] == 0  # the state at the failed round's start, not a half-trained one


def _result(client_id: int, loss: float) -> Any:
    from csfl_fabric.state import ClientResult

    return ClientResult(client_id=client_id, num_samples=1, num_steps=1, samples_processed=1, loss=loss,
                        loss_sq_sum=loss)

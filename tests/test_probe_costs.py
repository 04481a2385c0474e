"""Every probe is counted: downloads, uploads, FLOPs and simulated time of ``ctx.probe`` / ``ctx.probe_gradients``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from csfl_fabric import run
from csfl_fabric.build import build_dataset

from .conftest import SMOKE

# The smoke run: digits, 10 clients, logreg 64 -> 10 (float32), batch size 16.
MODEL_BYTES = (64 * 10 + 10) * 4
FLOPS = 2 * 64 * 10  # forward FLOPs per sample


def _sizes(result: Any) -> np.ndarray:
    _, parts = build_dataset(result.config)
    return np.array([len(p) for p in parts])


class Cohorts:
    """Records each round's selected ids."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []

    def on_selection(self, selection: Any) -> None:
        self.ids.append(selection.ids.tolist())


def _run(smoke: list[str], *overrides: str) -> tuple[Any, Cohorts]:
    cohorts = Cohorts()
    result = run(SMOKE, [*smoke, "rounds.num_rounds=2", *overrides], callbacks=[cohorts])
    assert json.loads((result.run_dir / "study.json").read_text())["model_bytes"] == MODEL_BYTES
    return result, cohorts


def _trained_flops(result: Any, cohorts: Cohorts, r: int) -> float:
    return 3.0 * FLOPS * _sizes(result)[cohorts.ids[r]].sum()  # one local epoch per client


def test_pow_d_with_d_10_and_k_2_sends_10_models_per_round(smoke: list[str]) -> None:
    result, cohorts = _run(smoke, "selector.name=heuristic.pow_d", "selector.d=10", "rounds.clients_per_round=2")
    n = _sizes(result)
    for r, row in enumerate(result.metrics):
        # All 10 candidates got the model to compute their loss; the 2 selected ones train from that copy.
        assert row["cost/bytes_down"] == row["cost/probe_bytes_down"] == 10 * MODEL_BYTES
        assert row["cost/bytes_up"] == 2 * MODEL_BYTES  # a probed loss is one number
        assert row["cost/probe_flops"] == FLOPS * n.sum()  # one forward pass over every candidate's data
        assert row["cost/flops"] == _trained_flops(result, cohorts, r) + FLOPS * n.sum()
    assert result.metrics[-1]["cost/probe_bytes_down_total"] == 2 * 10 * MODEL_BYTES
    assert result.summary["cost_bytes_down_total"] == 2 * 10 * MODEL_BYTES


def test_pow_d_probe_phase_is_on_the_clock(smoke: list[str], tmp_path: Path) -> None:
    from csfl_fabric.build import build_run
    from csfl_fabric.config import load_config

    # Prepare: a pow-d run with the default system model, whose profiles give each client's probe time.
    cohorts = Cohorts()
    config = load_config(SMOKE, [*smoke, "selector.name=heuristic.pow_d", "selector.d=10", "rounds.num_rounds=1",
                                 "rounds.clients_per_round=2"])
    built = build_run(config, run_dir=tmp_path / "run", callbacks=[cohorts])
    p, n = built.orchestrator.systems.profiles, built.orchestrator.store.num_samples
    # Execute
    built.orchestrator.run()
    # Assert: the round = probe phase (slowest download + forward pass at 3x the training speed) + the slowest
    # selected client's training and upload (no second download: it kept the probe's copy).
    probe_s = float(np.max(p.transfer_s + n / (3 * p.speed)))
    ids = cohorts.ids[0]
    train_s = float(np.max(p.compute_s[ids] + p.transfer_s[ids]))
    from csfl_fabric.engine.loggers import read_metrics

    assert read_metrics(tmp_path / "run")[0]["time/sim_round_s"] == pytest.approx(probe_s + train_s)


def test_cpow_d_probes_one_batch_of_train_batch_size(smoke: list[str]) -> None:
    result, cohorts = _run(smoke, "selector.name=heuristic.cpow_d", "selector.d=10", "rounds.clients_per_round=2",
                           "train.batch_size=8")
    evaluated = np.minimum(_sizes(result), 8).sum()  # the first batch of 8 of each candidate (batch_size: null)
    for r, row in enumerate(result.metrics):
        assert row["cost/bytes_down"] == row["cost/probe_bytes_down"] == 10 * MODEL_BYTES
        assert row["cost/probe_flops"] == FLOPS * evaluated
        assert row["cost/flops"] == _trained_flops(result, cohorts, r) + FLOPS * evaluated


def test_afl_pays_for_valuing_every_client_once(smoke: list[str]) -> None:
    result, cohorts = _run(smoke, "selector.name=learning.afl")
    first, second = result.metrics
    # Round 0 probes all 10 clients (no valuation yet); the 4 selected train from that copy.
    assert first["cost/probe_bytes_down"] == first["cost/bytes_down"] == 10 * MODEL_BYTES
    assert first["cost/probe_flops"] == FLOPS * _sizes(result).sum()
    # Round 1: valuations come from the training losses, no probe.
    assert second["cost/probe_bytes_down"] == second["cost/probe_flops"] == 0
    assert second["cost/bytes_down"] == 4 * MODEL_BYTES


def test_divfl_gradients_are_counted_as_probes(smoke: list[str]) -> None:
    result, cohorts = _run(smoke, "selector.name=learning.divfl")
    n = _sizes(result)
    first, second = result.metrics
    # Round 0: every client's gradient (download, forward + backward over its data, a model-sized upload).
    assert first["cost/probe_bytes_down"] == first["cost/bytes_down"] == 10 * MODEL_BYTES
    assert first["cost/probe_bytes_up"] == 10 * MODEL_BYTES
    assert first["cost/bytes_up"] == (4 + 10) * MODEL_BYTES
    assert first["cost/probe_flops"] == 3 * FLOPS * n.sum()
    # Round 1 (k = 4 > 1): only the 4 selected clients' gradients are refreshed, at the model they receive.
    picked = cohorts.ids[1]
    assert second["cost/probe_bytes_down"] == second["cost/bytes_down"] == 4 * MODEL_BYTES
    assert second["cost/probe_bytes_up"] == 4 * MODEL_BYTES
    assert second["cost/probe_flops"] == 3 * FLOPS * n[picked].sum()
    assert second["select/probed_clients"] == 4

"""Selection signals (gradient statistics, label histograms, update-norm probes, absolute weights) and budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from csfl_fabric.cohort import CohortTrainer
from csfl_fabric.trainer import ClientTrainer, TrainSettings

from csfl_fabric import run
from csfl_fabric.aggregation import FedAvg
from csfl_fabric.build import build_run, stream
from csfl_fabric.config import load_config
from csfl_fabric.data.systems import BUDGET, DROPOUT, KEPT, SystemModel, SystemProfiles, admit, round_energy
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.errors import ConfigError
from csfl_fabric.selection import heuristic  # noqa: F401  (registers)
from tests.test_cohort import _model, _store

from .conftest import SMOKE

# --- absolute aggregation weights -------------------------------------------------------------------------------


def test_absolute_weights_leave_the_missing_mass_with_the_global_model() -> None:
    agg = FedAvg()
    agg.reset({"w": torch.tensor([1.0, 1.0])}, absolute=True)
    agg.update({"w": torch.tensor([3.0, 1.0])}, 0.5)
    agg.update({"w": torch.tensor([1.0, 5.0])}, 1.0)
    # global + 0.5 (3 - 1, 1 - 1) + 1.0 (1 - 1, 5 - 1) = (2, 5); a normalised mean would give (1.67, 3.67)
    assert agg.compute()["w"].tolist() == pytest.approx([2.0, 5.0])
    agg.reset({"w": torch.tensor([1.0, 1.0])})
    agg.update({"w": torch.tensor([3.0, 1.0])}, 0.5)
    agg.update({"w": torch.tensor([1.0, 5.0])}, 1.0)
    assert agg.compute()["w"].tolist() == pytest.approx([5 / 3, 11 / 3])


# --- gradient statistics ----------------------------------------------------------------------------------------


def test_grad_stats_match_the_update_of_plain_sgd_and_the_cohort_backend() -> None:
    settings = TrainSettings(batch_size=4, lr=0.1, local_epochs=2)
    store, fabric = _store(), Fabric(accelerator="cpu", devices=1)
    sequential = ClientTrainer(fabric, _model(), settings, 4)
    sequential.grad_stats = True
    start = sequential.global_params()
    params, result = sequential.fit(start, store.client(0, round_idx=1))
    update = torch.cat([(params[k] - start[k]).reshape(-1) for k in sequential._param_keys])
    # Plain SGD: update = -lr * sum of the step gradients, so their mean is -update / (lr * steps).
    torch.testing.assert_close(result.grad_mean, -update / (0.1 * result.num_steps), atol=1e-5, rtol=1e-4)
    assert result.grad_sq_mean >= float(result.grad_mean.square().sum())  # E||g||^2 >= ||E g||^2
    assert result.grad_sigma is not None
    assert result.grad_sigma > 0
    cohort = CohortTrainer(fabric, _model(), settings, 4)
    cohort.grad_stats = True
    rows = list(cohort.fit_many(cohort.global_params(), [store.client(c, round_idx=1) for c in range(3)]))
    torch.testing.assert_close(rows[0][1].grad_mean, result.grad_mean, atol=1e-5, rtol=1e-4)
    assert rows[0][1].grad_sq_mean == pytest.approx(result.grad_sq_mean, rel=1e-4)
    plain = ClientTrainer(fabric, _model(), TrainSettings(batch_size=4), 4)
    assert plain.fit(plain.global_params(), store.client(0, 1))[1].grad_mean is None  # only when asked


# --- energy and budgets in the clock ----------------------------------------------------------------------------


def _model_with(energy_per_client: float = 10.0, n: int = 4, **budgets: Any) -> SystemModel:
    # compute 5 s at 2 W = 10 J, instant transfers; a 100-byte model.
    profiles = SystemProfiles(speed=np.ones(n), bandwidth=np.full(n, 1e9), model_bytes=100,
                              compute_s=np.full(n, energy_per_client / 2), transfer_s=np.zeros(n), **budgets)
    return SystemModel(profiles, np.full(n, 10), stream(0, "availability"), stream(0, "dropout"))


def test_round_energy_and_first_fit_admission() -> None:
    assert round_energy(np.array([3.0]), np.array([0.5]), 2.0, 1.0).tolist() == [7.0]  # 3 x 2 + 2 x 0.5 x 1
    assert admit(np.array([4.0, 4.0, 1.0, 4.0]), budget=9.0).tolist() == [True, True, True, False]


def test_energy_budget_sends_the_model_in_selection_order_while_it_fits() -> None:
    model = _model_with(energy_budget_j=25.0)
    plan = model.plan(np.array([3, 1, 0, 2]), k=4)
    assert plan.status == (KEPT, KEPT, BUDGET, BUDGET)  # 10 + 10 J; a third would reach 30 J
    assert plan.energy_j == 20.0
    assert model.metrics(plan)["select/num_over_budget"] == 2.0
    assert model.metrics(plan)["cost/energy_j_total"] == 20.0


def test_probes_spend_energy_and_bytes_of_the_budget() -> None:
    model = _model_with(energy_budget_j=25.0, bytes_budget=450.0)
    # A gradient probe: forward and backward over 10 samples at 1 sample/s and 2 W = 20 J; download + upload.
    model.record_probe([0], gradients=True)
    plan = model.plan(np.array([2, 3]), k=2)
    assert plan.status == (BUDGET, BUDGET)  # 20 J + 10 J > 25 J
    assert plan.energy_j == 20.0
    # A loss probe of one sample: a forward pass, a third of a training step (2/3 J), one 100-byte download.
    model.record_probe([0], batch_size=1)
    plan = model.plan(np.array([2, 3]), k=2)
    assert plan.status == (KEPT, BUDGET)  # bytes: 100 + 200 fits 450, a second client (+200) does not
    assert plan.energy_j == pytest.approx(2 / 3 + 10.0)
    # A probed client that is then selected already holds the model: it only uploads (100 + 100 + 200 <= 450).
    model.record_probe([2], batch_size=1)
    assert model.plan(np.array([2, 3]), k=2).status == (KEPT, KEPT)
    model.record_probe([0], train=True)  # an update probe costs the whole local training: 5 s
    assert model.plan(np.array([1]), k=1).probe_s == 5.0


def test_time_budget_cuts_late_clients_and_ends_the_round_at_the_budget() -> None:
    profiles = SystemProfiles(speed=np.ones(3), bandwidth=np.full(3, np.inf), model_bytes=0,
                              compute_s=np.array([1.0, 2.0, 6.0]), transfer_s=np.zeros(3), time_budget_s=4.0)
    model = SystemModel(profiles, np.full(3, 10), stream(0, "availability"), stream(0, "dropout"))
    plan = model.plan(np.array([0, 1, 2]), k=3)
    assert plan.status == (KEPT, KEPT, BUDGET)
    assert plan.round_s == 4.0  # it waited for k updates until the budget ran out
    model.record_probe([0], gradients=True)  # forward and backward over 10 samples at 1 sample/s: 10 s > 4 s
    plan = model.plan(np.array([0, 1]), k=2)
    assert plan.status == (BUDGET, BUDGET)
    assert plan.round_s == 10.0


def test_dropouts_are_drawn_only_for_clients_sent_the_model() -> None:
    profiles = SystemProfiles(speed=np.ones(50), bandwidth=np.full(50, np.inf), model_bytes=0,
                              compute_s=np.ones(50), transfer_s=np.zeros(50), energy_budget_j=2 * 5 + 1)
    model = SystemModel(profiles, np.full(50, 10), stream(0, "availability"), stream(0, "dropout"), dropout=0.5)
    status = model.plan(np.arange(50), k=50).status
    assert status[5:] == (BUDGET,) * 45
    assert set(status[:5]) <= {KEPT, DROPOUT}


@pytest.mark.parametrize(("override", "message"), [
    ("systems.energy_budget_j=0", "`systems.energy_budget_j` to be > 0"),
    ("systems.time_budget_s=-1", "`systems.time_budget_s` to be > 0"),
    ("systems.bytes_budget=0", "`systems.bytes_budget` to be > 0"),
    ("systems.compute_power_w=-2", "`systems.compute_power_w` to be >= 0"),
])
def test_budget_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, [override])


def test_budgets_are_enforced_in_a_run_for_any_selector(smoke: list[str]) -> None:
    # Smoke clients (~180 samples, 100 samples/s at 2 W, a 2.6 kB model at ~1 MB/s): a few J each.
    result = run(SMOKE, [*smoke, "systems.energy_budget_j=12", "rounds.num_rounds=3"])
    rounds = result.metrics
    assert all(m["cost/energy_j"] <= 12 for m in rounds)
    assert sum(m["select/num_over_budget"] for m in rounds) > 0
    assert rounds[-1]["cost/energy_j_total"] == pytest.approx(sum(m["cost/energy_j"] for m in rounds))
    assert result.summary["cost_energy_j_total"] == pytest.approx(rounds[-1]["cost/energy_j_total"])


# --- signals in real runs ---------------------------------------------------------------------------------------


def _built(tmp_path: Path, overrides: list[str]) -> Any:
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    return build_run(load_config(SMOKE, [*overrides, "rounds.num_rounds=2"]), run_dir=run_dir)


def test_label_histograms_reach_only_selectors_that_declare_them(tmp_path: Path) -> None:
    built = _built(tmp_path, ["selector.name=learning.fedcbs"])
    hist = built.orchestrator.label_histograms
    store = built.orchestrator.store
    assert hist.shape == (10, 10)
    assert hist.sum(axis=1).tolist() == store.num_samples.tolist()
    built.orchestrator.run()
    assert _built(tmp_path / "plain", ["selector.name=heuristic.random"]).orchestrator.label_histograms is None


def test_delta_gets_gradient_statistics_and_moves_its_probabilities(tmp_path: Path) -> None:
    built = _built(tmp_path, ["selector.name=learning.delta"])
    built.orchestrator.run()
    probs = built.orchestrator.selector.probs
    assert probs.sum() == pytest.approx(1.0)
    assert not np.allclose(probs, 0.1)


def test_ocs_probes_update_norms_of_every_candidate(smoke: list[str]) -> None:
    result = run(SMOKE, [*smoke, "selector.name=learning.ocs", "selector.candidates=6", "rounds.num_rounds=2"])
    assert [m["select/probed_clients"] for m in result.metrics] == [6, 6]
    assert all(m["time/sim_round_s"] > 0 for m in result.metrics)

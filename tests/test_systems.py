from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from csfl_fabric import run
from csfl_fabric.build import build_run, stream
from csfl_fabric.config import load_config
from csfl_fabric.data.systems import (
    CUT,
    DROPOUT,
    KEPT,
    LATE,
    SystemModel,
    SystemProfiles,
    read_profiles,
    read_trace,
    samples_per_round,
)
from csfl_fabric.errors import ConfigError
from csfl_fabric.state import Selection

from .conftest import SMOKE


def make_model(durations: list[float], deadline: float | None = None, seed: int = 0, **kwargs: Any) -> SystemModel:
    """A model whose clients take exactly ``durations`` seconds (compute only, instant transfers)."""
    n = len(durations)
    profiles = SystemProfiles(speed=np.ones(n), bandwidth=np.full(n, np.inf), model_bytes=0,
                              compute_s=np.array(durations, dtype=float), transfer_s=np.zeros(n), deadline=deadline)
    return SystemModel(profiles, np.full(n, 10), stream(seed, "availability"), stream(seed, "dropout"), **kwargs)


def test_duration_is_compute_plus_two_transfers_and_the_round_lasts_as_long_as_the_slowest() -> None:
    # speed 10 and 20 samples/s, 100 and 50 bytes/s, a 100-byte model, 30 and 40 samples per round.
    work = samples_per_round(np.array([30, 40]), batch_size=8)
    speed, bandwidth = np.array([10.0, 20.0]), np.array([100.0, 50.0])
    profiles = SystemProfiles(speed=speed, bandwidth=bandwidth, model_bytes=100, compute_s=work / speed,
                              transfer_s=100 / bandwidth)
    np.testing.assert_allclose(profiles.duration, [30 / 10 + 2 * 1.0, 40 / 20 + 2 * 2.0])  # 5 s and 6 s
    model = SystemModel(profiles, np.array([30, 40]), stream(0, "a"), stream(0, "d"))
    plan = model.plan(np.array([1, 0]), k=2)
    np.testing.assert_allclose(plan.durations, [6.0, 5.0])
    assert plan.round_s == 6.0
    assert plan.status == (KEPT, KEPT)
    model.plan(np.array([0]), k=2)
    assert model.total_s == 11.0


def test_samples_per_round_matches_what_the_trainer_processes(smoke: list[str]) -> None:
    seen: dict[int, int] = {}

    class Record:
        def on_client_end(self, client_id: int, result: Any) -> None:
            seen[client_id] = result.samples_processed

    for extra in (["train.local_epochs=2"], ["train.local_steps=5", "train.batch_size=7"]):
        result = run(SMOKE, [*smoke, "rounds.num_rounds=1", *extra], callbacks=[Record()])
        c = result.config.train
        built = build_run(result.config, run_dir=result.run_dir / "again")
        expected = samples_per_round(built.orchestrator.store.num_samples, c.batch_size, c.local_epochs, c.local_steps)
        assert seen
        assert all(seen[i] == expected[i] for i in seen)
        seen.clear()


def test_deadline_drop_discards_late_clients_and_waits_until_the_deadline() -> None:
    plan = make_model([1.0, 3.0, 5.0], deadline=4.0).plan(np.array([0, 1, 2]), k=3)
    assert plan.status == (KEPT, KEPT, LATE)
    assert plan.dropped.tolist() == [2]
    assert plan.round_s == 4.0  # fewer than k reported: the server waited for the deadline
    selection = Selection(ids=np.array([0, 1, 2]), probs=np.array([0.1, 0.2, 0.3]))
    kept = plan.apply(selection)
    assert kept.ids.tolist() == [0, 1]
    assert kept.probs.tolist() == [0.1, 0.2]


def test_deadline_wait_keeps_late_clients_and_counts_them() -> None:
    model = make_model([1.0, 3.0, 5.0], deadline=4.0, deadline_policy="wait")
    plan = model.plan(np.array([0, 1, 2]), k=3)
    assert plan.status == (KEPT, KEPT, KEPT)
    assert plan.round_s == 5.0
    assert model.metrics(plan)["select/num_late"] == 1.0


def test_overcommitment_keeps_the_k_fastest_and_ends_with_the_kth() -> None:
    model = make_model([4.0, 1.0, 3.0, 2.0, 9.0], overcommit=1.3)
    assert model.num_to_select(3) == 4  # ceil(3.9)
    assert make_model([1.0] * 20, overcommit=1.3).num_to_select(10) == 13  # not 14 from 1.3 * 10 = 13.000000000000002
    plan = model.plan(np.array([0, 1, 2, 3]), k=3)
    assert plan.status == (CUT, KEPT, KEPT, KEPT)
    assert plan.round_s == 3.0
    assert model.metrics(plan)["select/num_dropped"] == 1.0


def test_dropouts_follow_their_own_stream_whatever_is_selected() -> None:
    n, p = 400, 0.3
    a, b = make_model([1.0] * n, dropout=p), make_model([1.0] * n, dropout=p)
    plan_a = a.plan(np.arange(n), k=n)
    plan_b = b.plan(np.arange(0, n, 2), k=n)
    dropped_a = set(plan_a.dropped.tolist())
    assert set(plan_b.dropped.tolist()) == {c for c in dropped_a if c % 2 == 0}
    assert abs(len(dropped_a) / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert plan_a.count(DROPOUT) == len(dropped_a)
    assert plan_a.round_s == 1.0  # no deadline: dropouts are noticed at once


def test_a_round_where_nobody_reports_lasts_the_deadline() -> None:
    plan = make_model([5.0, 6.0], deadline=2.0).plan(np.array([0, 1]), k=2)
    assert plan.status == (LATE, LATE)
    assert plan.round_s == 2.0
    assert len(plan.kept) == 0


def test_bernoulli_availability_rate_within_a_statistical_bound() -> None:
    model = make_model([1.0] * 200, availability="bernoulli", availability_p=0.3)
    rounds = [model.available(r) for r in range(50)]
    rate = sum(len(ids) for ids in rounds) / (200 * 50)
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 10_000)
    assert all(np.all(np.diff(ids) > 0) for ids in rounds)  # sorted and unique


def test_trace_file_parsing_and_online_windows(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("client_id,start,end\n0,0,2\n1,1,3\n0,5,6\n2,0,100\n")
    trace = read_trace(str(path))
    model = make_model([2.5, 2.5, 2.5], availability="trace", trace=trace)
    assert [model.available(r).tolist() for r in range(6)] == [[0, 2], [0, 1, 2], [1, 2], [2], [2], [0, 2]]
    # In seconds, availability follows the simulated clock: each round lasts 2.5 s here.
    timed = make_model([2.5, 2.5, 2.5], availability="trace", trace=trace, trace_unit="second")
    assert timed.available(0).tolist() == [0, 2]
    timed.plan(np.array([2]), k=1)
    assert timed.available(1).tolist() == [1, 2]  # t = 2.5


@pytest.mark.parametrize(("content", "message"), [
    ("client_id,begin,end\n0,0,1\n", "lacks `start`"),
    ("client_id,start,end\n0,3,1\n", "end < start"),
    ("client_id,start,end\n0,x,1\n", "non-numeric"),
])
def test_bad_trace_files_give_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_trace(str(path))


def test_profiles_from_csv_in_any_row_order(tmp_path: Path, smoke: list[str]) -> None:
    path = tmp_path / "profiles.csv"
    rows = [f"{c},{10 + c},{1000 * (c + 1)}" for c in reversed(range(12))]  # 12 rows for 10 clients: extra ignored
    path.write_text("client_id,speed,bandwidth\n" + "\n".join(rows) + "\n")
    speed, bandwidth = read_profiles(str(path), 10)
    assert speed.tolist() == [10.0 + c for c in range(10)]
    assert bandwidth.tolist() == [1000.0 * (c + 1) for c in range(10)]
    built = build_run(load_config(SMOKE, [*smoke, f"systems.profiles={path}"]), run_dir=tmp_path / "run")
    assert built.orchestrator.systems.profiles.speed.tolist() == speed.tolist()
    with pytest.raises(ConfigError, match="no row for client 12"):
        read_profiles(str(path), 13)
    with pytest.raises(ConfigError, match="does not exist"):
        read_profiles(str(tmp_path / "missing.csv"), 3)


@pytest.mark.parametrize(("override", "message"), [
    ("systems.overcommit=0.5", "systems.overcommit"),
    ("systems.availability=trace", "systems.trace"),
    ("systems.deadline_policy=skip", "drop, wait|wait, drop"),
    ("systems.dropout=1.0", "systems.dropout"),
    ("systems.deadline=0", "systems.deadline"),
])
def test_systems_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, [override])


class Spy:
    """Wraps a selector and records what it saw and chose."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.available: list[list[int]] = []
        self.chosen: list[list[int]] = []

    def __getattr__(self, name: str) -> Any:  # class attributes such as allows_duplicates
        return getattr(self.inner, name)

    def select(self, ctx: Any) -> Any:
        self.available.append(ctx.available.tolist())
        selection = self.inner.select(ctx)
        self.chosen.append(selection.ids.tolist())
        return selection


def spy_run(tmp_path: Path, overrides: list[str]) -> tuple[Spy, Any]:
    built = build_run(load_config(SMOKE, [f"logging.dir={tmp_path}", *overrides]), run_dir=tmp_path / "r")
    built.run_dir.mkdir(parents=True)
    spy = Spy(built.orchestrator.selector)
    built.orchestrator.selector = spy  # type: ignore[assignment]
    built.orchestrator.run()
    return spy, built


def test_selectors_see_only_available_clients_and_every_method_sees_the_same_trace(tmp_path: Path) -> None:
    common = ["systems.availability=bernoulli", "systems.availability_p=0.5", "rounds.num_rounds=4",
              "data.num_clients=10", "rounds.clients_per_round=3", "systems.deadline=1000"]
    traces = {}
    for name in ("heuristic.random", "system.oort", "system.fedcs"):
        spy, _ = spy_run(tmp_path / name, [*common, f"selector.name={name}"])
        assert all(set(c) <= set(a) for c, a in zip(spy.chosen, spy.available, strict=True))
        traces[name] = spy.available
    expected_rng = stream(0, "availability")
    expected = [np.flatnonzero(expected_rng.random(10) < 0.5).tolist() for _ in range(4)]
    assert traces["heuristic.random"] == traces["system.oort"] == traces["system.fedcs"] == expected


def test_time_to_accuracy_and_the_clock_in_metrics_and_summary(tmp_path: Path, smoke: list[str]) -> None:
    result = run(SMOKE, [*smoke, "rounds.target_accuracy=0.01", "systems.overcommit=1.5", "systems.dropout=0.2"])
    rounds = result.metrics
    np.testing.assert_allclose(np.cumsum([m["time/sim_round_s"] for m in rounds]),
                               [m["time/sim_total_s"] for m in rounds])
    assert result.summary["rounds_to_target"] == 1
    assert result.summary["sim_seconds_to_target"] == rounds[0]["time/sim_total_s"] > 0
    assert result.summary["sim_total_s"] == rounds[-1]["time/sim_total_s"]
    assert all(m["select/num_selected"] == 6 for m in rounds)  # ceil(1.5 * 4)
    assert all(m["select/num_selected"] - m["select/num_dropped"] <= 4 for m in rounds)


def test_probes_add_a_phase_as_long_as_the_slowest_probed_client() -> None:
    # Prepare: 10 samples each at 1 sample/s of training (a forward pass: 3 samples/s), transfers of 2 s each.
    model = make_model([1.0, 2.0, 3.0])
    model.profiles.speed[2] = 4.0
    model.profiles.transfer_s[:] = 2.0
    # A loss probe: download (2 s) + 10 samples / (3 x speed): client 0 takes 2 + 10/3, client 2 takes 2 + 10/12.
    model.record_probe([0, 2])
    plan = model.plan(np.array([1]), k=1)
    assert plan.probe_s == pytest.approx(2 + 10 / 3)
    # Client 1 was not probed: compute 2 s + download and upload of 2 s each.
    assert plan.round_s == pytest.approx(2 + 10 / 3 + 2.0 + 4.0)
    assert model.plan(np.array([1]), k=1).round_s == pytest.approx(6.0)  # the probe cost does not carry over
    # A mini-batch of 4 samples; then the probed client 1 is selected and trains from the model it downloaded.
    model.record_probe([0, 1], batch_size=4)
    plan = model.plan(np.array([1]), k=1)
    assert plan.probe_s == pytest.approx(2 + 4 / 3)
    assert plan.durations.tolist() == pytest.approx([2.0 + 2.0])  # compute + upload, no second download
    # A gradient probe: download, forward and backward at the training speed (10 s), upload of the gradient.
    model.record_probe([0], gradients=True)
    assert model.plan(np.array([2]), k=1).probe_s == pytest.approx(2 + 10 + 2)

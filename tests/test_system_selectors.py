from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from csfl_fabric import run
from csfl_fabric.data.systems import SystemProfiles
from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.system import FedCSSelector, OortSelector, greedy_deadline, oort_utility
from csfl_fabric.state import ClientHistory, ClientResult, Feedback, Selection, SelectionContext

from .conftest import SMOKE


def profiles(durations: np.ndarray, deadline: float | None = None) -> SystemProfiles:
    n = len(durations)
    return SystemProfiles(speed=np.ones(n), bandwidth=np.full(n, 1e9), model_bytes=0, compute_s=durations,
                          transfer_s=np.zeros(n), deadline=deadline)


def context(num_samples: np.ndarray, prof: SystemProfiles, k: int, round_idx: int = 0,
            available: np.ndarray | None = None, seed: int = 0) -> SelectionContext:
    return SelectionContext(round=round_idx, k=k,
                            available=np.arange(len(num_samples)) if available is None else available,
                            num_samples=num_samples, history=ClientHistory(num_samples),
                            rng=np.random.default_rng(seed), probe=lambda ids: np.zeros(len(ids)), profiles=prof)


def result(cid: int, n: int, loss_sq_sum: float, processed: int | None = None) -> ClientResult:
    return ClientResult(client_id=cid, num_samples=n, num_steps=1, samples_processed=processed or n, loss=1.0,
                        loss_sq_sum=loss_sq_sum)


# ---- FedCS ---------------------------------------------------------------------------------------------------


def test_oort_at_k_1_explores_with_probability_epsilon() -> None:
    # Prepare: a fixed eps = 0.5 (no decay) and 40 clients, one a round: every round that explores picks a
    # client never selected before, every exploiting round one that was (FedScale's int and our earlier
    # k - int(k eps) both made k=1 explore never again after round 0).
    from tests.selection_fakes import FakeLoop

    selector = OortSelector(epsilon=0.5, decay=1.0, min_epsilon=0.5)
    loop = FakeLoop(seed=0, num_clients=40)
    loop.available = lambda r: np.arange(40)  # type: ignore[method-assign]
    picks = [int(s.ids[0]) for _, s in loop.run(selector, range(30), k=1)]
    # Execute/Assert: rounds 1..29 explore ~ Binomial(29, 0.5) times (mean 14.5, sd 2.7).
    explored = sum(picks[r] not in picks[:r] for r in range(1, 30))
    assert 5 <= explored <= 24, explored


def test_fedcs_greedy_rule_on_a_hand_computed_case() -> None:
    # Model of 10 bytes; client 1's bandwidth of 2 makes the broadcast T_d = 5 s once it joins, else 1 s.
    args = {"t_ud": np.array([1.0, 0.5, 3.0]), "t_ul": np.array([1.0, 1.0, 1.0]),
            "bandwidth": np.array([10.0, 2.0, 10.0]), "model_bytes": 10.0}
    # Step 1 (Theta=0): increments 1+1+1=3, 5+1+0.5=6.5, 1+1+3=5 -> client 0; Theta'=2, 1+2=3 < budget.
    # Step 2 (Theta=2, T_d=1): client 1: 4+1+0=5, client 2: 0+1+1=2 -> client 2; Theta'=4, 1+4=5 < budget.
    # Step 3: client 1: Theta'=4+1+0=5, T_d=5: 10 -> accepted only if 10 < budget.
    ids, scores = greedy_deadline(np.array([0, 1, 2]), budget=8.0, k=3, **args)
    assert ids.tolist() == [0, 2]
    np.testing.assert_allclose(scores, [1 / 3, 1 / 2])
    assert greedy_deadline(np.array([0, 1, 2]), budget=10.5, k=3, **args)[0].tolist() == [0, 2, 1]
    assert greedy_deadline(np.array([0, 1, 2]), budget=10.5, k=1, **args)[0].tolist() == [0]
    # Nothing fits: the fastest single candidate.
    assert greedy_deadline(np.array([0, 1, 2]), budget=0.1, k=3, **args)[0].tolist() == [0]


def test_fedcs_uses_the_systems_deadline_or_none() -> None:
    prof = profiles(np.array([1.0, 9.0, 2.0, 3.0]), deadline=6.5)
    selection = FedCSSelector(fraction=1.0).select(context(np.full(4, 10), prof, k=4))
    # Uploads are instant here, so Theta is the largest compute time: 1, 2 and 3 s fit, 9 s does not.
    assert sorted(selection.ids.tolist()) == [0, 2, 3]
    assert FedCSSelector(deadline=9.5).select(context(np.full(4, 10), prof, k=4)).ids.tolist() == [0, 2, 3, 1]
    # No deadline anywhere: the k that extend the schedule least, fastest first.
    no_deadline = profiles(np.array([1.0, 9.0, 2.0, 3.0]))
    assert FedCSSelector().select(context(np.full(4, 10), no_deadline, k=2)).ids.tolist() == [0, 2]
    with pytest.raises(ValueError, match="`fraction`"):
        FedCSSelector(fraction=0.0)


def test_fedcs_clients_never_miss_the_deadline_in_a_run(smoke: list[str]) -> None:
    # Each accepted client's compute + 2 transfers <= T_d(S) + Theta' < T_round, so none is late on our clock.
    result = run(SMOKE, [*smoke, "selector.name=system.fedcs", "selector.fraction=1.0", "systems.deadline=1.0",
                         "rounds.num_rounds=2"])
    assert all(m["select/num_late"] == 0 and m["select/num_selected"] >= 1 for m in result.metrics)
    assert all(m["time/sim_round_s"] < 1.0 for m in result.metrics)


# ---- Oort ----------------------------------------------------------------------------------------------------


def test_oort_statistical_utility() -> None:
    # 5 samples, 2 epochs: 10 processed, squared losses summing to 40: 5 * sqrt(40 / 10) = 10.
    assert oort_utility(5, 40.0, 10) == 10.0


def test_oort_exploitation_scores_on_a_hand_computed_case() -> None:
    oort = OortSelector(clip_bound=0.5)
    oort.reward = np.array([10.0, 20.0, 40.0, 1000.0])
    oort.last_round = np.array([1, 2, 3, 1])
    scores = oort.exploit_scores(np.arange(4), now=4)
    # Clipped at the 0.5 quantile (index 2 of the sorted utilities: 40); min * 0.999; range up to the raw max.
    low, spread = 10 * 0.999, 1000 - 10 * 0.999
    expected = [(min(u, 40) - low) / spread + math.sqrt(0.1 * math.log(4) / last)
                for u, last in zip([10, 20, 40, 1000], [1, 2, 3, 1], strict=True)]
    np.testing.assert_allclose(scores, expected)


def test_oort_speed_penalty_uses_the_threshold_percentile_of_durations() -> None:
    oort = OortSelector(round_threshold=40.0, alpha=2.0)
    oort.duration = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    assert oort.preferred_duration() == 3.0  # sorted index int(5 * 0.4) = 2
    np.testing.assert_allclose(oort.speed_penalty(), [1, 1, 1, (3 / 4) ** 2, 0.3**2])
    assert OortSelector(round_threshold=100.0).preferred_duration() == math.inf


def explored_oort(n: int, explored: int, **kwargs: Any) -> OortSelector:
    oort = OortSelector(**kwargs)
    oort.reward = np.arange(1.0, n + 1)
    oort.duration = np.ones(n)
    oort.last_round = np.zeros(n, dtype=np.int64)
    oort.count = np.zeros(n, dtype=np.int64)
    oort.count[:explored], oort.last_round[:explored] = 1, 1
    return oort


def test_oort_splits_exploration_and_exploitation() -> None:
    n = 20
    ctx = context(np.arange(1, n + 1) * 10, profiles(np.ones(n)), k=10, round_idx=1)
    oort = explored_oort(n, explored=10, epsilon=0.3, min_epsilon=0.3, sample_window=1.0)
    selection = oort.select(ctx)
    ids = selection.ids.tolist()
    # int(10 * 0.3) = 3 explored first, then 7 exploited; sample_window 1 makes exploration the 3 largest priors.
    assert sorted(ids[:3]) == [17, 18, 19]
    assert all(c < 10 for c in ids[3:])
    assert len(ids[3:]) == 7
    assert len(set(ids)) == 10
    # With one unexplored client left, exploitation takes the free slots.
    oort = explored_oort(n, explored=19, epsilon=0.3, min_epsilon=0.3)
    ids = oort.select(ctx).ids.tolist()
    assert ids[0] == 19
    assert len(ids) == 10
    assert all(c < 19 for c in ids[1:])


def test_oort_exploitation_samples_by_score_from_the_cut_off_pool() -> None:
    n, trials = 30, 2000
    oort = explored_oort(n, explored=n, epsilon=0.0, min_epsilon=0.0, cut_off_util=0.95)
    oort.reward = np.where(np.arange(n) < 3, 100.0, 1.0)  # three clients with a high utility
    oort.last_round[:] = 5
    state = oort.state_dict()
    picks = np.zeros(n)
    for seed in range(trials):
        oort.load_state_dict(state)
        np.add.at(picks, oort.select(context(np.ones(n, dtype=np.int64), profiles(np.ones(n)), 1, 5, seed=seed)).ids, 1)
    # k=1: the cut-off (0.95 x the 2nd best) admits the 3 high scores; the pool is widened to 10k+1 = 11
    # clients, the 8 lowest ids among equal low scores. Scores: 1 + bonus and 0 + bonus, bonus = sqrt(0.1 ln 6 / 5).
    bonus = math.sqrt(0.1 * math.log(6) / 5)
    p_high = 3 * (1 + bonus) / (3 * (1 + bonus) + 8 * bonus)
    assert abs(picks[:3].sum() / trials - p_high) < 4 * math.sqrt(p_high * (1 - p_high) / trials)
    assert picks[11:].sum() == 0
    assert picks[3:11].min() > 0


def test_oort_update_rewards_stragglers_with_the_round_mean_and_tracks_participation() -> None:
    n = 4
    oort = OortSelector()
    oort.select(context(np.full(n, 4), profiles(np.ones(n)), k=3))
    selection = Selection(ids=np.array([0, 1, 2]))
    feedback = Feedback(round=0, selection=selection, results=[result(0, 4, 4.0), result(1, 4, 16.0)],
                        durations=np.array([1.0, 2.0, 7.0]), dropped=np.array([2]))
    oort.update(feedback)
    np.testing.assert_allclose(oort.reward[:3], [4.0, 8.0, 6.0])  # 4 sqrt(1), 4 sqrt(4), mean of both
    assert oort.reward[3] == 4.0  # still the data-size prior
    assert oort.count.tolist() == [1, 1, 1, 0]
    assert oort.last_round.tolist() == [1, 1, 1, 0]
    assert oort.duration.tolist() == [1.0, 2.0, 7.0, 1.0]


def test_oort_pacer_relaxes_the_preferred_duration_when_utility_is_flat() -> None:
    oort = explored_oort(10, explored=10, pacer_step=2, pacer_delta=5.0, round_threshold=30.0)
    # Last round's exploited client 0 reported a utility of 1: this round's entry is ~1, so 4 flat rounds.
    oort.reward[0], oort.last_exploit, oort.successful = 1.0, np.array([0]), np.array([0])
    oort.exploit_history = [1.0, 1.0, 1.0]
    oort.select(context(np.ones(10, dtype=np.int64), profiles(np.ones(10)), k=2, round_idx=3))  # R = 4 = 2 W
    assert oort.round_threshold == 35.0
    oort.exploit_history = [1.0, 1.0, 100.0]  # + an entry of 0 (nobody reported): the window sum jumps 2 -> 100
    oort.select(context(np.ones(10, dtype=np.int64), profiles(np.ones(10)), k=2, round_idx=5))
    assert oort.round_threshold == 30.0


def test_oort_blacklists_over_selected_clients_up_to_a_cap() -> None:
    oort = explored_oort(4, explored=4, blacklist_rounds=2, blacklist_max_len=0.5)
    oort.count = np.array([5, 1, 7, 0])
    assert oort.blacklist().tolist() == [2, 0]
    oort.blacklist_max_len = 0.25
    assert oort.blacklist().tolist() == [2]
    assert 2 not in oort.select(context(np.ones(4, dtype=np.int64), profiles(np.ones(4)), k=3, round_idx=3)).ids


@pytest.mark.parametrize("name", ["system.oort", "system.fedcs"])
def test_state_dict_round_trip_gives_an_identical_continuation(name: str) -> None:
    n, k = 12, 4
    prof = profiles(np.linspace(1, 3, n), deadline=20.0)
    sizes = np.arange(5, 5 + n)

    def step(sel: Any, r: int, rng: np.random.Generator) -> list[int]:
        ctx = SelectionContext(round=r, k=k, available=np.arange(n), num_samples=sizes, history=ClientHistory(sizes),
                               rng=rng, probe=lambda ids: np.zeros(len(ids)), profiles=prof)
        ids = sel.select(ctx).ids
        sel.update(Feedback(round=r, selection=Selection(ids=ids), durations=prof.duration[ids],
                            results=[result(int(c), int(sizes[c]), float(c + r)) for c in ids[:-1]],
                            dropped=ids[-1:]))
        return ids.tolist()

    first, rng = SELECTORS.build(name, {"fraction": 1.0} if name == "system.fedcs" else {}), np.random.default_rng(3)
    for r in range(3):
        step(first, r, rng)
    second = SELECTORS.build(name, {"fraction": 1.0} if name == "system.fedcs" else {})
    second.load_state_dict(first.state_dict())
    rng_copy = np.random.default_rng(0)
    rng_copy.bit_generator.state = rng.bit_generator.state
    assert [step(first, r, rng) for r in range(3, 6)] == [step(second, r, rng_copy) for r in range(3, 6)]


@pytest.mark.parametrize("bad", [{"epsilon": 1.5}, {"decay": 0.0}, {"round_threshold": 0.0}, {"pacer_step": 0},
                                 {"blacklist_rounds": -1}, {"clip_bound": 1.2}])
def test_oort_validates_its_hyperparameters(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
        OortSelector(**bad)


def test_oort_runs_end_to_end_with_overcommitment_and_a_deadline(smoke: list[str]) -> None:
    result = run(SMOKE, [*smoke, "selector.name=system.oort", "systems.overcommit=1.3", "systems.deadline=0.5",
                         "rounds.num_rounds=4"])
    assert all(m["select/num_selected"] == 6 for m in result.metrics)  # ceil(1.3 * 4)
    assert all("select/mean_score" in m for m in result.metrics)
    assert [SELECTORS.get(name).needs_profiles for name in ("system.oort", "system.fedcs")] == [True, True]

"""Rule tests of the wave-2 selectors against hand computations from their papers (and the authors' code)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.learning.balance import qcid
from csfl_fabric.selection.learning.fedcor import fedcor_greedy, gp_condition
from csfl_fabric.selection.learning.importance import (
    approximate_ocs_probabilities,
    ocs_probabilities,
    refresh_probabilities,
    systematic_sample,
)
from csfl_fabric.selection.system.tifl import latency_tiers, tier_probabilities
from csfl_fabric.state import ClientHistory, ClientResult, Feedback, Selection, SelectionContext
from tests.system_fakes import fake_profiles


def _context(sizes: list[int], k: int, rng: np.random.Generator, *, probe: Any = None, round_idx: int = 0,
             available: list[int] | None = None, **extra: Any) -> SelectionContext:
    n = np.asarray(sizes)
    return SelectionContext(round=round_idx, k=k, available=np.arange(len(n)) if available is None else
                            np.asarray(available), num_samples=n, history=ClientHistory(n), rng=rng,
                            probe=probe or (lambda ids, batch_size=None, signal="loss": np.zeros(len(ids))), **extra)


def _result(c: int, loss: float, n: int = 10, **extra: Any) -> ClientResult:
    return ClientResult(c, n, 1, n, loss, loss**2 * n, **extra)


def _feedback(round_idx: int, results: list[ClientResult], **extra: Any) -> Feedback:
    return Feedback(round=round_idx, selection=Selection(ids=np.array([r.client_id for r in results])),
                    results=results, **extra)


# --- heuristic.uniform_scaled ------------------------------------------------------------------------------------


def test_uniform_scaled_weights_are_k_over_m_times_the_data_share() -> None:
    sizes = [10, 20, 30, 40]
    sel = SELECTORS.build("heuristic.uniform_scaled").select(_context(sizes, 2, np.random.default_rng(0)))
    assert sel.absolute_weights
    assert np.allclose(sel.weights, 4 / 2 * np.array(sizes)[sel.ids] / 100)  # (K/m) p_k
    original = SELECTORS.build("heuristic.uniform_scaled", {"variant": "original"})
    sel = original.select(_context(sizes, 2, np.random.default_rng(0)))
    assert np.allclose(sel.weights, np.array(sizes)[sel.ids] / 100)


def test_uniform_scaled_is_unbiased_for_the_size_weighted_mean() -> None:
    sizes, x = np.array([10, 20, 30, 40]), np.array([1.0, -2.0, 3.0, 5.0])
    selector, rng = SELECTORS.build("heuristic.uniform_scaled"), np.random.default_rng(1)
    estimates = [float(s.weights @ x[s.ids]) for s in (selector.select(_context(list(sizes), 2, rng))
                                                       for _ in range(4000))]
    assert np.mean(estimates) == pytest.approx(float(sizes @ x / sizes.sum()), abs=0.05)


# --- heuristic.adapow_d -----------------------------------------------------------------------------------------


def test_adapow_d_probes_every_client_then_k() -> None:
    probed: list[int] = []
    selector = SELECTORS.build("heuristic.adapow_d", {"every": 3})

    def probe(ids: np.ndarray, batch_size: int | None = None, signal: str = "loss") -> np.ndarray:
        probed.append(len(ids))
        return np.arange(len(ids), dtype=float)

    for r in range(5):
        sel = selector.select(_context([10] * 8, 2, np.random.default_rng(r), probe=probe, round_idx=r))
        assert len(sel.ids) == 2
    assert probed == [8, 8, 8, 2, 2]  # d = K for `every` rounds, then d = k
    with pytest.raises(ConfigError, match="d_end"):
        SELECTORS.build("heuristic.adapow_d", {"d_end": 1}).select(_context([10] * 8, 2, np.random.default_rng(0)))


# --- heuristic.grad_norm / label_coverage -----------------------------------------------------------------------


def test_grad_norm_tries_unseen_clients_then_ranks_by_last_update_norm() -> None:
    selector = SELECTORS.build("heuristic.grad_norm")
    updates = {0: torch.tensor([3.0, 4.0]), 1: torch.tensor([1.0, 0.0]), 2: torch.tensor([0.0, 2.0])}
    selector.update(_feedback(0, [_result(c, 1.0) for c in updates], updates=updates))
    sel = selector.select(_context([10] * 4, 2, np.random.default_rng(0)))
    assert sel.ids.tolist()[0] == 3
    assert np.isinf(sel.scores[0])
    assert sel.ids.tolist()[1] == 0
    assert sel.scores[1] == pytest.approx(5.0)
    l1 = SELECTORS.build("heuristic.grad_norm", {"ord": 1})
    l1.update(_feedback(0, [_result(0, 1.0)], updates={0: torch.tensor([3.0, -4.0])}))
    assert l1.norms[0] == pytest.approx(7.0)


def test_grad_norm_fresh_probes_the_update_norms_of_every_available_client() -> None:
    calls: list[tuple[list[int], str]] = []

    def probe(ids: np.ndarray, batch_size: int | None = None, signal: str = "loss") -> np.ndarray:
        calls.append((list(ids), signal))
        return np.array([0.5, 3.0, 1.0])

    sel = SELECTORS.build("heuristic.grad_norm", {"fresh": True}).select(
        _context([10] * 5, 2, np.random.default_rng(0), probe=probe, available=[0, 2, 4]))
    assert calls == [([0, 2, 4], "update_norm")]
    assert sel.ids.tolist() == [2, 4]


def test_label_coverage_greedy_by_hand() -> None:
    # Classes held: 0 -> {0, 1}, 1 -> {1, 2}, 2 -> {3}, 3 -> {0}; class 3 is rare.
    hist = np.array([[5, 5, 0, 0], [0, 5, 5, 0], [0, 0, 0, 1], [9, 0, 0, 0]])
    idf = SELECTORS.build("heuristic.label_coverage")
    sel = idf.select(_context([10] * 4, 2, np.random.default_rng(0), label_histograms=hist))
    assert sel.ids.tolist()[0] == 2  # class 3's weight 1/1 beats 1/14 + 1/10 of client 0 (idf)
    assert sel.scores[0] == pytest.approx(1.0)
    uniform = SELECTORS.build("heuristic.label_coverage", {"weighting": "uniform"})
    firsts = set()
    for seed in range(20):
        sel = uniform.select(_context([10] * 4, 2, np.random.default_rng(seed), label_histograms=hist))
        assert sel.ids[0] in (0, 1)
        assert sel.scores.tolist() == [2.0, 1.0]
        firsts.add(int(sel.ids[0]))
    assert firsts == {0, 1}  # the tie is broken at random


# --- learning.delta ---------------------------------------------------------------------------------------------


def test_delta_refreshes_participants_probabilities_by_hand() -> None:
    selector = SELECTORS.build("learning.delta")
    selector.select(_context([10] * 4, 2, np.random.default_rng(0)))  # p starts uniform, 1/4
    g0, g1 = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0])  # mean (2, 0): zeta = 1 for both
    results = [_result(0, 1.0, grad_mean=g0, grad_sq_mean=1.0), _result(1, 1.0, grad_mean=g1, grad_sq_mean=13.0)]
    selector.update(_feedback(0, results))  # sigma_0 = 0, sigma_1 = sqrt(13 - 9) = 2
    s0, s1 = np.sqrt(0.8 * 1 + 0.2 * 0), np.sqrt(0.8 * 1 + 0.2 * 4)  # times lambda = 1/4 for both
    assert np.allclose(selector.probs, [0.5 * s0 / (s0 + s1), 0.5 * s1 / (s0 + s1), 0.25, 0.25])
    sized = SELECTORS.build("learning.delta")
    sized.select(_context([10, 30, 60], 2, np.random.default_rng(0)))
    sized.update(_feedback(0, results))  # the same statistics: the scores now carry lambda = 0.1 and 0.3
    assert np.allclose(sized.probs[:2] / sized.probs[:2].sum(), [0.1 * s0, 0.3 * s1] / (0.1 * s0 + 0.3 * s1))


def test_delta_weights_are_the_unbiased_importance_weights() -> None:
    selector = SELECTORS.build("learning.delta")
    first = selector.select(_context([10, 10, 20, 60], 2, np.random.default_rng(0)))
    q = np.array([0.1, 0.1, 0.2, 0.6])
    assert np.allclose(selector.probs, q)  # p starts at the data shares: a simple average, 1/m
    assert np.allclose(first.weights, 0.5)
    selector.probs = np.array([0.1, 0.2, 0.3, 0.4])
    sel = selector.select(_context([10, 10, 20, 60], 2, np.random.default_rng(0)))
    assert sel.absolute_weights
    assert np.allclose(sel.weights, q[sel.ids] / (2 * selector.probs[sel.ids]))


def test_delta_practical_rule_follows_the_official_reweight() -> None:
    selector = SELECTORS.build("learning.delta", {"rule": "practical", "beta": 0.5})
    selector.select(_context([10] * 3, 2, np.random.default_rng(0)))
    g0, g1 = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0])
    selector.update(_feedback(0, [_result(0, 1.0, grad_mean=g0, grad_sq_mean=1.0),
                                  _result(1, 1.0, grad_mean=g1, grad_sq_mean=9.0)]))
    w0, w1 = 0.5 * (0.5 * 1 + 0.5 * 1), 0.5 * (0.5 * 3 + 0.5 * 1)  # q (1-b)||g|| + q b ||g - mean||
    assert np.allclose(selector.probs[:2], np.array([w0, w1]) / (w0 + w1) * (2 / 3))
    assert refresh_probabilities(np.array([0.5, 0.5]), np.array([0]), np.array([0.0])).tolist() == [0.5, 0.5]


# --- learning.ocs -----------------------------------------------------------------------------------------------


def test_ocs_probabilities_by_hand_and_their_sum() -> None:
    # Norms 1, 1, 1, 7 with m = 2: l = 4 fails (2 > 10 / 7), l = 3 holds (1 <= 3 / 1): p = 1/3, 1/3, 1/3, 1.
    assert np.allclose(ocs_probabilities(np.array([1.0, 7.0, 1.0, 1.0]), 2), [1 / 3, 1, 1 / 3, 1 / 3])
    assert np.allclose(ocs_probabilities(np.array([2.0, 2.0, 4.0]), 2), [0.5, 0.5, 1.0])
    p = ocs_probabilities(np.random.default_rng(0).lognormal(0, 1, 20), 5)
    assert p.sum() == pytest.approx(5)
    assert (p <= 1 + 1e-12).all()
    assert np.allclose(approximate_ocs_probabilities(np.array([1.0, 7.0, 1.0, 1.0]), 2, j_max=4),
                       [1 / 3, 1, 1 / 3, 1 / 3])


def test_systematic_sampling_has_the_inclusion_probabilities_and_a_fixed_size() -> None:
    p = np.array([1.0, 0.5, 0.25, 0.25, 0.6, 0.4])  # sums to 3
    rng = np.random.default_rng(0)
    draws = [systematic_sample(p, rng) for _ in range(4000)]
    assert {len(d) for d in draws} == {3}
    freq = np.bincount(np.concatenate(draws), minlength=6) / 4000
    assert np.allclose(freq, p, atol=0.03)


def test_ocs_selection_is_an_unbiased_estimate_of_the_candidates_update() -> None:
    sizes, norms = np.array([10, 20, 30, 40, 50]), np.array([1.0, 0.2, 3.0, 0.5, 2.0])
    selector, rng = SELECTORS.build("learning.ocs"), np.random.default_rng(3)

    def probe(ids: np.ndarray, batch_size: int | None = None, signal: str = "loss") -> np.ndarray:
        assert signal == "update_norm"
        return norms[ids]

    q = sizes / sizes.sum()
    estimates = []
    for _ in range(3000):
        sel = selector.select(_context(list(sizes), 2, rng, probe=probe))
        assert sel.absolute_weights
        assert len(sel.ids) == 2
        estimates.append(float(sel.weights @ norms[sel.ids]))  # a_k ||U_k||, a_k = q_k / p_k
    assert np.mean(estimates) == pytest.approx(float(q @ norms), rel=0.03)


# --- learning.fedcbs --------------------------------------------------------------------------------------------


def test_qcid_and_fedcbs_probabilities_by_hand() -> None:
    hist = np.array([[4, 0], [0, 2], [1, 1]])
    assert qcid(hist[[0]]) == pytest.approx(0.5)  # (1 - 1/2)^2 + (0 - 1/2)^2
    assert qcid(hist[[2]]) == pytest.approx(0.0)
    assert qcid(hist[[0, 1]]) == pytest.approx((4 / 6 - 0.5) ** 2 + (2 / 6 - 0.5) ** 2)
    selector = SELECTORS.build("learning.fedcbs", {"lam": 0.0})
    sel = selector.select(_context([4, 2, 2], 2, np.random.default_rng(0), label_histograms=hist[[0, 1, 0]]))
    # Clients 0 and 2 hold only class 0, client 1 only class 1: QCID 0.5 each, first pick uniform (1/3);
    # the second must be the one that balances: QCID({0 or 2, 1}) = 1/36, QCID({0, 2}) = 0.5.
    assert sel.probs[0] == pytest.approx(1 / 3)
    first = int(sel.ids[0])
    if first == 1:
        assert sel.probs[1] == pytest.approx(0.5)
    else:
        inv = 1 / np.array([(4 / 6 - 0.5) ** 2 * 2, 0.5]) ** 2  # beta_2 = 2: (balanced pair, same-class pair)
        assert sel.probs[1] == pytest.approx(inv[0] / inv.sum() if sel.ids[1] == 1 else inv[1] / inv.sum())


def test_fedcbs_bonus_favours_rarely_selected_clients() -> None:
    selector = SELECTORS.build("learning.fedcbs", {"lam": 10.0})
    hist = np.array([[2, 2], [2, 2]])  # both balanced: only the bonus differs
    selector.counts = np.array([9.0, 0.0])  # T = 10 and 1
    rng = np.random.default_rng(0)
    firsts = [int(selector.select(_context([4, 4], 1, rng, round_idx=9, label_histograms=hist)).ids[0])
              for _ in range(400)]
    b = 10 * np.sqrt(3 * np.log(10) / (2 * np.array([10.0, 1.0])))
    s = 1 / 1e-12 + b  # a QCID of 0 is floored at 1e-12: the bonus is negligible next to it
    assert np.mean(firsts) == pytest.approx(s[1] / s.sum(), abs=0.08)


# --- learning.fedcor --------------------------------------------------------------------------------------------


def test_fedcor_conditioning_step_by_hand() -> None:
    cov = np.array([[2.0, 1.0, 0.5], [1.0, 2.0, 0.0], [0.5, 0.0, 1.0]])
    post = gp_condition(cov, 0)
    # Sigma - Sigma[:, 0] Sigma[0, :] / 2
    assert np.allclose(post, [[0.0, 0.0, 0.0], [0.0, 1.5, -0.25], [0.0, -0.25, 0.875]])
    # First pick: (sum_i p_i Sigma_ik) / sqrt(Sigma_kk) = (3.5, 3, 1.5) / 3 / (1.414, 1.414, 1): client 0.
    # Then, over {1, 2} of the posterior: (1.5 - 0.25) / sqrt(1.5) = 1.02 vs (0.875 - 0.25) / sqrt(0.875) = 0.67.
    assert fedcor_greedy(cov, np.full(3, 1 / 3), np.ones(3), np.arange(3), 2) == [0, 1]
    assert fedcor_greedy(cov, np.full(3, 1 / 3), np.array([0.1, 1.0, 1.0]), np.arange(3), 1) == [1]  # discounted


def test_fedcor_schedule_warm_up_greedy_and_retraining_rounds() -> None:
    probed: list[int] = []
    selector = SELECTORS.build("learning.fedcor", {"warmup": 2, "interval": 2, "epochs": 5, "warmup_epochs": 5,
                                                   "dimension": 3})

    def probe(ids: np.ndarray, batch_size: int | None = None, signal: str = "loss") -> np.ndarray:
        probed.append(r)
        return np.linspace(1.0, 2.0, len(ids)) / (r + 1)

    rng = np.random.default_rng(0)
    picked = {}
    for r in range(7):
        before = selector.discount.copy()
        sel = selector.select(_context([10] * 6, 2, rng, probe=probe, round_idx=r))
        picked[r] = sel.ids.tolist()
        assert np.allclose(sel.weights, 0.5)  # simple average
        if r == 3:  # a greedy round: the picked clients are discounted
            assert np.allclose(selector.discount[sel.ids], 0.9 * before[sel.ids])
    # Warm-up rounds 0, 1 probe at their start; round 2 closes round 1; round 4 retrains (random, probed
    # before) and round 5 closes it; round 6 = 2 + 2 * 2 is the next retraining round.
    assert probed == [0, 1, 2, 4, 5, 6]
    assert [d[0] for d in selector.data] == [0, 1, 4]
    # Retrained at the start of round 5: the discounts started over, then round 5's greedy picks were discounted.
    expected = np.ones(6)
    expected[picked[5]] = 0.9
    assert np.allclose(selector.discount, expected)


# --- learning.linucb / eps_greedy -------------------------------------------------------------------------------


def test_linucb_index_and_update_by_hand() -> None:
    selector = SELECTORS.build("learning.linucb", {"alpha": 0.5, "ridge": 1.0})
    x = np.array([[1.0, 0, 0, 0, 0, 0], [1.0, 1, 0, 0, 0, 0]])
    assert np.allclose(selector.indices(x), [0.5, 0.5 * np.sqrt(2)])  # theta = 0: the width only
    selector.pending = {3: x[1]}
    selector.loss.last = np.array([np.nan, np.nan, np.nan, 2.0])
    selector.update(_feedback(0, [_result(3, 1.5)]))  # reward 2.0 - 1.5
    a = np.eye(6) + np.outer(x[1], x[1])
    assert np.allclose(selector.a, a)
    assert np.allclose(selector.b, 0.5 * x[1])
    theta = np.linalg.solve(a, 0.5 * x[1])
    width = 0.5 * np.sqrt(x[1] @ np.linalg.solve(a, x[1]))
    assert selector.indices(x[1:])[0] == pytest.approx(x[1] @ theta + width)
    assert selector.metrics() == {"select/reward": pytest.approx(0.5)}


def test_eps_greedy_sample_means_and_greedy_choice() -> None:
    selector = SELECTORS.build("learning.eps_greedy", {"epsilon": 0.0})
    for r, losses in enumerate([{0: 3.0, 1: 3.0, 2: 3.0}, {0: 2.0, 1: 2.5, 2: 1.0}, {0: 0.0}]):
        selector.update(_feedback(r, [_result(c, v) for c, v in losses.items()]))
    assert np.allclose(selector.value, [(1.0 + 2.0) / 2, 0.5, 2.0])  # incremental means of the loss drops
    sel = selector.select(_context([10] * 4, 2, np.random.default_rng(0)))
    assert sel.ids.tolist() == [3, 2]  # client 3 has no reward yet (+inf), then the best mean
    explorer = SELECTORS.build("learning.eps_greedy", {"epsilon": 1.0})
    assert len(set(explorer.select(_context([10] * 4, 4, np.random.default_rng(0))).ids.tolist())) == 4


# --- system.tifl ------------------------------------------------------------------------------------------------


def test_tifl_tiers_and_change_probs_by_hand() -> None:
    assert latency_tiers(np.array([9.0, 1.0, 5.0, 3.0, 7.0, 2.0]), 3).tolist() == [2, 0, 1, 1, 2, 0]
    # Accuracies 0.9, 0.5, 0.7: ranks 2, 0, 1 of n = 3; D = 6: (3 - rank) / 6.
    assert np.allclose(tier_probabilities(np.array([0.9, 0.5, 0.7]), np.ones(3)), [1 / 6, 3 / 6, 2 / 6])


def test_tifl_picks_one_tier_per_round_and_adapts_to_tier_losses() -> None:
    profiles = fake_profiles(12, 0)
    tiers = latency_tiers(profiles.duration, 3)
    selector = SELECTORS.build("system.tifl", {"num_tiers": 3, "interval": 2})

    def probe(ids: np.ndarray, batch_size: int | None = None, signal: str = "loss") -> np.ndarray:
        return np.where(tiers[ids] == 2, 5.0, 1.0)  # the slowest tier has the highest loss (lowest accuracy)

    rng = np.random.default_rng(0)
    for r in range(3):
        sel = selector.select(_context([10] * 12, 3, rng, probe=probe, round_idx=r, profiles=profiles))
        assert len(set(tiers[sel.ids].tolist())) == 1  # one tier, k clients of it
    assert np.allclose(selector.probs[2], 3 / 6)
    assert np.allclose(sorted(selector.probs[:2]), [1 / 6, 2 / 6])


def test_tifl_credits_exclude_a_spent_tier() -> None:
    profiles = fake_profiles(12, 0)
    tiers = latency_tiers(profiles.duration, 3)
    selector = SELECTORS.build("system.tifl", {"num_tiers": 3, "credits": 1, "interval": 100})
    rng = np.random.default_rng(0)
    chosen = [int(tiers[selector.select(_context([10] * 12, 2, rng, round_idx=r, profiles=profiles)).ids[0]])
              for r in range(3)]
    assert sorted(chosen) == [0, 1, 2]  # one credit each: every tier exactly once


# --- invalid params ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "param", "value"), [
    ("heuristic.uniform_scaled", "variant", "scheme3"), ("heuristic.adapow_d", "every", 0),
    ("heuristic.adapow_d", "schedule", "linear"), ("heuristic.grad_norm", "ord", 3),
    ("heuristic.label_coverage", "weighting", "tfidf"), ("learning.delta", "alpha1", -1.0),
    ("learning.delta", "rule", "theory"), ("learning.delta", "objective", "median"),
    ("learning.ocs", "variant", "greedy"), ("learning.ocs", "j_max", 0),
    ("learning.fedcbs", "beta", 0.0), ("learning.fedcor", "warmup", 0), ("learning.fedcor", "discount", 1.5),
    ("learning.linucb", "ridge", 0.0), ("learning.eps_greedy", "epsilon", 2.0), ("system.tifl", "num_tiers", 0),
    ("system.tifl", "signal", "accuracy"),
])
def test_bad_params_are_one_line_errors_naming_the_key(name: str, param: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"selector.params.{param}=") as info:
        SELECTORS.build(name, {param: value})
    assert "\n" not in str(info.value)

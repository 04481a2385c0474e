"""Rule tests per selector on small hand-computed cases and statistical bounds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.sampling import facility_location_greedy, similarity_urns, size_urns
from csfl_fabric.state import ClientHistory, ClientResult, Feedback, Selection, SelectionContext


def _ctx(num_samples: list[int], k: int, rng: np.random.Generator, probe=None, history=None,  # noqa: ANN001
         available: list[int] | None = None, round_idx: int = 0) -> SelectionContext:
    n = np.asarray(num_samples)
    avail = np.arange(len(n)) if available is None else np.asarray(available)
    return SelectionContext(round=round_idx, k=k, available=avail, num_samples=n,
                            history=history if history is not None else ClientHistory(n), rng=rng,
                            probe=probe or (lambda ids, batch_size=None: np.zeros(len(ids))))


def _feedback(round_idx: int, losses: dict[int, float], n: int = 10) -> Feedback:
    results = [ClientResult(c, n, 1, n, loss, loss**2 * n) for c, loss in losses.items()]
    return Feedback(round=round_idx, selection=Selection(ids=np.array(list(losses))), results=results)


# --- heuristic.pow_d / cpow_d / rpow_d -------------------------------------------------------------------------


def test_pow_d_selects_the_highest_loss_candidates() -> None:
    losses = np.array([0.5, 3.0, 1.0, 2.0, 0.1, 4.0, 0.7, 2.5])
    probed: list[np.ndarray] = []

    def probe(ids: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        probed.append(np.asarray(ids))
        return losses[ids]

    selector = SELECTORS.build("heuristic.pow_d", {"d": 5})
    for seed in range(20):
        sel = selector.select(_ctx([10] * 8, 2, np.random.default_rng(seed), probe))
        candidates = probed[-1]
        assert len(candidates) == len(set(candidates.tolist())) == 5  # d distinct candidates, all probed
        expected = candidates[np.argsort(-losses[candidates])[:2]]
        assert sel.ids.tolist() == expected.tolist()
        assert np.allclose(sel.scores, losses[expected])
        assert np.allclose(sel.weights, 0.5)  # simple average


def test_pow_d_candidates_follow_data_size_probabilities() -> None:
    # With d = k = 1 the one candidate is the selection: it must be Categorical(n_k / sum n).
    sizes = [10, 20, 30, 40]
    selector = SELECTORS.build("heuristic.pow_d", {"d": 1})
    rng = np.random.default_rng(0)
    draws = [int(selector.select(_ctx(sizes, 1, rng)).ids[0]) for _ in range(4000)]
    counts = np.bincount(draws, minlength=4)
    expected = 4000 * np.array(sizes) / sum(sizes)
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_pow_d_rejects_d_below_k_and_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"`selector.params.d=0`"):
        SELECTORS.build("heuristic.pow_d", {"d": 0})
    with pytest.raises(ConfigError, match=r"`selector.params.d=2`.*clients_per_round=3"):
        SELECTORS.build("heuristic.pow_d", {"d": 2}).select(_ctx([10] * 5, 3, np.random.default_rng(0)))


def test_cpow_d_probes_a_mini_batch() -> None:
    seen: list[int | None] = []

    def probe(ids: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        seen.append(batch_size)
        return np.arange(len(ids), dtype=float)

    selector = SELECTORS.build("heuristic.cpow_d", {"d": 4, "batch_size": 7})
    selector.select(_ctx([5] * 6, 2, np.random.default_rng(0), probe))
    assert seen == [7]


def test_rpow_d_scores_by_stale_loss_and_tries_unseen_clients_first() -> None:
    history = ClientHistory(np.full(6, 10))
    history.record(0, [ClientResult(c, 10, 1, 10, loss, 0.0) for c, loss in [(0, 5.0), (1, 1.0), (2, 3.0), (3, 2.0)]])
    selector = SELECTORS.build("heuristic.rpow_d", {"d": 6})  # d = K: every client is a candidate
    sel = selector.select(_ctx([10] * 6, 3, np.random.default_rng(0), history=history))
    assert set(sel.ids[:2].tolist()) == {4, 5}  # never selected: +inf
    assert sel.ids[2] == 0  # then the highest stale loss
    assert sel.scores.tolist()[:2] == [np.inf, np.inf]


# --- heuristic.size_proportional, round_robin, loss ------------------------------------------------------------


def test_size_proportional_frequencies_match_data_shares() -> None:
    sizes = [5, 10, 25, 60]
    selector = SELECTORS.build("heuristic.size_proportional")
    rng = np.random.default_rng(1)
    ids = np.concatenate([selector.select(_ctx(sizes, 3, rng)).ids for _ in range(1500)])
    assert stats.chisquare(np.bincount(ids, minlength=4), len(ids) * np.array(sizes) / sum(sizes)).pvalue > 1e-3
    sel = selector.select(_ctx(sizes, 3, rng))
    assert np.allclose(sel.weights, 1 / 3)
    assert np.allclose(sel.probs, np.array(sizes)[sel.ids] / sum(sizes))


def test_size_proportional_draws_with_replacement() -> None:
    selector = SELECTORS.build("heuristic.size_proportional")
    sel = selector.select(_ctx([1, 1000], 5, np.random.default_rng(0)))
    assert selector.allows_duplicates
    assert sel.ids.tolist().count(1) >= 4


@pytest.mark.parametrize("shuffle", [False, True])
def test_round_robin_covers_every_client_before_repeating(shuffle: bool) -> None:
    selector = SELECTORS.build("heuristic.round_robin", {"shuffle": shuffle})
    rng = np.random.default_rng(0)
    passes = [[selector.select(_ctx([1] * 12, 4, rng)).ids.tolist() for _ in range(3)] for _ in range(3)]
    for rounds in passes:
        assert sorted(sum(rounds, [])) == list(range(12))
    if not shuffle:
        assert passes[0] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] == passes[1]
    else:
        assert passes[0] != passes[1]


def test_round_robin_counts_never_differ_by_more_than_one() -> None:
    selector = SELECTORS.build("heuristic.round_robin")
    counts = np.zeros(10, dtype=int)
    rng = np.random.default_rng(0)
    for _ in range(13):
        counts[selector.select(_ctx([1] * 10, 4, rng)).ids] += 1
        assert counts.max() - counts.min() <= 1


def test_loss_selector_takes_top_stale_losses_and_explores() -> None:
    history = ClientHistory(np.full(5, 10))
    history.record(0, [ClientResult(c, 10, 1, 10, float(c), 0.0) for c in range(5)])
    top = SELECTORS.build("heuristic.loss", {"epsilon": 0.0}).select(_ctx([10] * 5, 2, np.random.default_rng(0),
                                                                          history=history))
    assert top.ids.tolist() == [4, 3]
    explored = SELECTORS.build("heuristic.loss", {"epsilon": 0.5})
    rng = np.random.default_rng(0)
    picks = [explored.select(_ctx([10] * 5, 2, rng, history=history)).ids for _ in range(2000)]
    # Explorers ~ Binomial(2, 0.5): 0 -> {4, 3}; 1 -> 4 and one of {0..3}; 2 -> two of all five.
    p4 = 0.25 + 0.5 + 0.25 * 2 / 5
    assert np.mean([4 in p for p in picks]) == pytest.approx(p4, abs=4 * np.sqrt(p4 * (1 - p4) / 2000))
    p0 = 0.5 * 1 / 4 + 0.25 * 2 / 5  # client 0 is never exploited
    assert np.mean([0 in p for p in picks]) == pytest.approx(p0, abs=4 * np.sqrt(p0 * (1 - p0) / 2000))


# --- learning.ucb ------------------------------------------------------------------------------------------------


def test_ucb_index_values_by_hand() -> None:
    selector = SELECTORS.build("learning.ucb", {"gamma": 0.5, "c": 1.0})
    selector.update(_feedback(0, {0: 2.0, 1: 1.0}))
    selector.update(_feedback(1, {0: 4.0}))
    # Client 0: S = 0.5 * 2 + 4 = 5, N = 0.5 + 1 = 1.5. Client 1: S = 0.5, N = 0.5. sum N = 2.
    idx = selector.indices(3)
    assert idx[0] == pytest.approx(5 / 1.5 + np.sqrt(2 * np.log(2.0) / 1.5))
    assert idx[1] == pytest.approx(0.5 / 0.5 + np.sqrt(2 * np.log(2.0) / 0.5))
    assert idx[2] == np.inf
    sel = selector.select(_ctx([10] * 3, 2, np.random.default_rng(0)))
    assert sel.ids.tolist() == [2, 0]


def test_ucb_ranks_by_the_data_weighted_index() -> None:
    # Client 0: index 2 + sqrt(2 ln 2 / 1) = 3.18 on 10 samples; client 1: index 1 + 1.18 = 2.18 on 40 samples.
    # By p_k I_k: 0.2 * 3.18 < 0.8 * 2.18, so client 1; unweighted (the default), client 0.
    selector = SELECTORS.build("learning.ucb", {"gamma": 1.0, "c": 1.0, "weighting": "size"})
    selector.update(_feedback(0, {0: 2.0, 1: 1.0}))
    ctx = _ctx([10, 40], 1, np.random.default_rng(0))
    sel = selector.select(ctx)
    assert sel.ids.tolist() == [1]
    assert sel.scores[0] == pytest.approx(0.8 * (1.0 + np.sqrt(2 * np.log(2.0))))
    unweighted = SELECTORS.build("learning.ucb", {"gamma": 1.0, "c": 1.0})
    unweighted.update(_feedback(0, {0: 2.0, 1: 1.0}))
    assert unweighted.select(ctx).ids.tolist() == [0]


def test_ucb_loss_reduction_reward() -> None:
    selector = SELECTORS.build("learning.ucb", {"gamma": 1.0, "c": 0.0, "reward": "loss_reduction"})
    selector.update(_feedback(0, {0: 3.0}))
    assert selector.indices(1)[0] == np.inf  # the first participation only sets the baseline
    selector.update(_feedback(1, {0: 2.5}))
    assert selector.indices(1)[0] == pytest.approx(0.5)


# --- learning.afl --------------------------------------------------------------------------------------------------


def test_afl_valuation_deletion_and_softmax() -> None:
    # 4 clients, alpha1 = 0.5: the two lowest valuations are excluded; alpha3 = 0: all by softmax.
    selector = SELECTORS.build("learning.afl", {"alpha1": 0.5, "alpha2": 1.0, "alpha3": 0.0})
    losses = np.array([1.0, 3.0, 2.0, 4.0])
    rng = np.random.default_rng(0)
    picks = [int(selector.select(_ctx([4] * 4, 1, rng, probe=lambda ids, batch_size=None: losses[ids])).ids[0])
             for _ in range(3000)]
    assert np.allclose(selector.valuation, 2.0 * losses)  # sqrt(n_k) * loss
    counts = np.bincount(picks, minlength=4)
    assert counts[0] == counts[2] == 0
    p = np.exp([6.0, 8.0]) / np.exp([6.0, 8.0]).sum()  # softmax of alpha2 * v over clients 1 and 3
    assert stats.chisquare(counts[[1, 3]], 3000 * p).pvalue > 1e-3
    selector.update(_feedback(0, {1: 0.5}, n=4))
    assert selector.valuation[1] == pytest.approx(1.0)


def test_afl_at_k_1_keeps_its_split_by_stochastic_rounding() -> None:
    # alpha2 = 100 makes the softmax part pick the highest valuation (client 3) every time; the uniform part
    # picks any of the 10. With n_soft = 1 w.p. 0.9 (0.9 k rounded stochastically), P(client 3) = 0.9 + 0.1 / 10;
    # the reference's int(0.9 k) = 0 would make it uniform sampling: 0.1.
    selector = SELECTORS.build("learning.afl", {"alpha1": 0.0, "alpha2": 100.0, "alpha3": 0.1})
    losses = np.array([0.1, 0.2, 0.3, 1.0, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3])
    rng = np.random.default_rng(0)
    picks = [int(selector.select(_ctx([4] * 10, 1, rng, probe=lambda ids, batch_size=None: losses[ids])).ids[0])
             for _ in range(400)]
    share = np.mean(np.array(picks) == 3)
    assert stats.binomtest(int(share * 400), 400, 0.91).pvalue > 0.001, share


def test_afl_uniform_part_can_pick_excluded_clients() -> None:
    selector = SELECTORS.build("learning.afl", {"alpha1": 0.75, "alpha2": 0.01, "alpha3": 1.0})
    rng = np.random.default_rng(0)
    ids = [int(selector.select(_ctx([4] * 4, 1, rng, probe=lambda ids, batch_size=None: np.arange(len(ids)))).ids[0])
           for _ in range(400)]
    assert set(ids) == {0, 1, 2, 3}


# --- learning.clustered_size / clustered_similarity ----------------------------------------------------------------


def test_size_urns_by_hand_and_expected_weights() -> None:
    p = np.array([0.4, 0.3, 0.2, 0.1])
    urns = size_urns(p, 2)
    # Clients by decreasing p: 0 puts 0.8 in urn 0; 1 puts 0.2 there and 0.4 in urn 1; 2 and 3 fill urn 1.
    assert np.allclose(urns, [[0.8, 0.2, 0.0, 0.0], [0.0, 0.4, 0.4, 0.2]])
    assert np.allclose(urns.sum(axis=0) / 2, p)  # each client's expected weight under a simple average is p_k


def test_clustered_size_draws_are_unbiased() -> None:
    sizes = [40, 30, 20, 10]
    selector = SELECTORS.build("learning.clustered_size")
    rng = np.random.default_rng(0)
    weight = np.zeros(4)
    for _ in range(3000):
        sel = selector.select(_ctx(sizes, 2, rng))
        np.add.at(weight, sel.ids, sel.weights)
    assert np.allclose(weight / 3000, np.array(sizes) / 100, atol=0.02)


def test_similarity_urns_put_similar_clients_in_one_urn() -> None:
    from scipy.cluster.hierarchy import linkage

    # Two families of equal mass 1/2 = 1/m: each urn must be one family.
    points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    urns = similarity_urns(linkage(points, "ward"), np.full(4, 0.25), 2, np.random.default_rng(0))
    assert sorted(tuple(np.flatnonzero(row)) for row in urns) == [(0, 1), (2, 3)]
    assert np.allclose(urns.sum(axis=0) / 2, 0.25)


@pytest.mark.parametrize("seed", range(5))
def test_similarity_urns_are_valid_for_any_tree_and_sizes(seed: int) -> None:
    from scipy.cluster.hierarchy import linkage

    rng = np.random.default_rng(seed)
    p = rng.lognormal(0, 1.5, 9)
    p[0] = p.sum()  # one client heavier than 1/m: it must be spread over several urns
    p /= p.sum()
    urns = similarity_urns(linkage(rng.normal(size=(9, 3)), "ward"), p, 3, rng)
    assert np.allclose(urns.sum(axis=1), 1.0)
    assert np.allclose(urns.sum(axis=0) / 3, p)  # unbiased: expected weight p_k
    assert (urns >= 0).all()


def test_clustered_similarity_separates_update_directions() -> None:
    import torch

    selector = SELECTORS.build("learning.clustered_similarity")
    updates = {c: torch.tensor([1.0, 0.05 * c]) if c < 3 else torch.tensor([0.05 * c, -1.0]) for c in range(6)}
    selector.update(Feedback(round=0, selection=Selection(ids=np.arange(6)), results=[], updates=updates))
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = selector.select(_ctx([10] * 6, 2, rng)).ids
        assert sorted(int(c) >= 3 for c in ids) == [False, True]  # one client from each direction


# --- learning.divfl ------------------------------------------------------------------------------------------------


def _cost(dist: np.ndarray, chosen: list[int]) -> float:
    return float(dist[:, chosen].min(axis=1).sum())


def _plain_greedy(dist: np.ndarray, m: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(m):
        rest = [c for c in range(len(dist)) if c not in chosen]
        chosen.append(min(rest, key=lambda c: _cost(dist, [*chosen, c])))
    return chosen


def test_lazy_greedy_matches_plain_greedy_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.normal(size=(7, 3))
        dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        lazy = facility_location_greedy(dist, 3, list(range(7)))
        # Same choices as plain greedy, up to exact ties (which the two evaluate in a different float order).
        plain = _plain_greedy(dist, 3)
        assert [_cost(dist, lazy[:i]) for i in (1, 2, 3)] == pytest.approx([_cost(dist, plain[:i]) for i in (1, 2, 3)])
        best = min(_cost(dist, list(s)) for s in itertools.combinations(range(7), 3))
        # Submodular guarantee on the coverage F(S) = sum_k (D - min_S d): F(greedy) >= (1 - 1/e) F(opt).
        top = dist.max() * 7
        assert top - _cost(dist, lazy) >= (1 - 1 / np.e) * (top - best) - 1e-9
    # Three tight pairs: greedy must find the optimum, one client per pair.
    pts = np.array([[0, 0], [0, 0.1], [5, 0], [5, 0.1], [0, 5], [0.1, 5]])
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    chosen = facility_location_greedy(dist, 3, list(range(6)))
    assert sorted(c // 2 for c in chosen) == [0, 1, 2]
    assert _cost(dist, chosen) == pytest.approx(min(_cost(dist, list(s)) for s in itertools.combinations(range(6), 3)))


def test_divfl_on_updates_takes_unseen_clients_then_diverse_ones() -> None:
    import torch

    selector = SELECTORS.build("learning.divfl", {"signal": "update"})
    rng = np.random.default_rng(0)
    first = selector.select(_ctx([10] * 4, 2, rng, available=[0, 1]))
    assert sorted(first.ids.tolist()) == [0, 1]  # no vectors yet: unseen clients first
    vecs = {0: [0.0, 0.0], 1: [0.0, 0.1], 2: [4.0, 0.0], 3: [4.0, 0.1]}
    updates = {c: torch.tensor(v) for c, v in vecs.items()}
    selector.update(Feedback(round=0, selection=first, results=[], updates=updates))
    sel = selector.select(_ctx([10] * 4, 2, rng, round_idx=1))
    assert sorted(int(c) // 2 for c in sel.ids) == [0, 1]  # one client from each pair
    assert sorted(sel.scores.tolist()) == [2.0, 2.0]  # each covers its pair
    assert sel.weights is None  # n-weighted, as the reference code
    assert first.scores.tolist() == [1.0, 1.0]  # a client without a vector represents itself


def test_divfl_coverage_weights() -> None:
    import torch

    selector = SELECTORS.build("learning.divfl", {"weights": "coverage", "signal": "update"})
    vecs = {0: [0.0, 0.0], 1: [0.0, 0.1], 2: [0.0, 0.2], 3: [4.0, 0.0]}
    selector.update(Feedback(round=0, selection=Selection(ids=np.arange(4)), results=[],
                             updates={c: torch.tensor(v) for c, v in vecs.items()}))
    sel = selector.select(_ctx([10] * 4, 2, np.random.default_rng(0)))
    assert dict(zip(sel.ids.tolist(), sel.weights.tolist(), strict=True)) == {1: 3.0, 3: 1.0}  # gamma = cluster sizes


@pytest.mark.parametrize(("name", "param", "value"), [
    ("heuristic.pow_d", "d", 0), ("heuristic.cpow_d", "batch_size", 0), ("heuristic.round_robin", "shuffle", "yes"),
    ("heuristic.loss", "epsilon", 2), ("learning.ucb", "gamma", 0), ("learning.ucb", "reward", "gain"),
    ("learning.afl", "alpha1", 1.0), ("learning.afl", "alpha2", "x"), ("learning.afl", "alpha3", True),
    ("learning.ucb", "weighting", "p"), ("learning.divfl", "signal", "grad"), ("learning.divfl", "refresh_every", 0),
])
def test_bad_params_are_one_line_errors_naming_the_key(name: str, param: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^Invalid `selector.params.{param}={value!r}`: "):
        SELECTORS.build(name, {param: value})


def test_round_robin_takes_an_offline_client_when_it_is_back() -> None:
    selector = SELECTORS.build("heuristic.round_robin")
    rng = np.random.default_rng(0)
    assert selector.select(_ctx([1] * 6, 2, rng, available=[1, 2, 3, 4, 5])).ids.tolist() == [1, 2]
    assert selector.select(_ctx([1] * 6, 2, rng)).ids.tolist() == [0, 3]  # client 0 was pending
    assert selector.select(_ctx([1] * 6, 2, rng)).ids.tolist() == [4, 5]
    assert selector.select(_ctx([1] * 6, 2, rng)).ids.tolist() == [0, 1]  # the next pass


def test_top_stable_is_a_stable_argsort_prefix():
    from csfl_fabric.selection.base import top_stable

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        values = rng.integers(0, 5, size=n).astype(float)  # many ties
        values[rng.random(n) < 0.1] = np.inf
        for m in (0, 1, n // 2, n - 1, n, n + 3):
            assert top_stable(values, m).tolist() == np.argsort(-values, kind="stable")[:m].tolist()

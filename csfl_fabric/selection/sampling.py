"""Pure helpers of the learning-based selectors: clustered-sampling urns and facility-location greedy.

Plain functions on numpy arrays, so that the tests compare them with hand-computed cases and brute force.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

#: Masses below this are treated as zero when pouring (float round-off of m * p_k sums).
_EPS = 1e-12


def pour(urns: np.ndarray, order: Sequence[int], mass: np.ndarray, start: int = 0) -> np.ndarray:
    """Pour ``mass[c]`` of each client ``c`` in ``order`` into urns of capacity 1, filling them in turn.

    Fraboni et al.'s Algorithm 1 step: a client whose mass does not fit spills into the next urn, so one
    client may sit in two (or, if its mass exceeds 1, more) urns. ``urns`` (m x K) is filled in place and
    returned; pouring starts at urn ``start`` and skips urns that are already full.

    >>> pour(np.zeros((2, 3)), [0, 1, 2], np.array([0.8, 0.8, 0.4])).round(2).tolist()
    [[0.8, 0.2, 0.0], [0.0, 0.6, 0.4]]
    """
    j = start
    for c in order:
        left = float(mass[c])
        while left > _EPS and j < len(urns):
            room = 1.0 - urns[j].sum()
            if room <= _EPS:
                j += 1
                continue
            put = min(room, left)
            urns[j, c] += put
            left -= put
        # Round-off can leave a few 1e-16 of the last client's mass without an urn: negligible by construction.
    return urns


def size_urns(p: np.ndarray, m: int) -> np.ndarray:
    """Algorithm 1 of clustered sampling: m urns of mass 1 filled with m * p_k, clients by decreasing p_k.

    Row j holds each client's probability of being drawn from urn j (rows sum to 1; column k sums to m p_k,
    so each client's expected aggregation weight under a simple average is p_k).

    >>> size_urns(np.array([0.5, 0.3, 0.2]), 2).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.6, 0.4]]
    """
    order = np.argsort(-p, kind="stable")
    return _normalised(pour(np.zeros((m, len(p))), order.tolist(), m * p))


def _normalised(urns: np.ndarray) -> np.ndarray:
    return urns / urns.sum(axis=1, keepdims=True)


def similarity_urns(linkage_matrix: np.ndarray, p: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Algorithm 2 of clustered sampling: urns from a hierarchical clustering of the clients.

    The dendrogram is cut where a merged group's total mass sum p_k would exceed 1/m (Fraboni et al.'s
    code replaces each merge height by that mass). The m heaviest groups each seed an urn; the clients of
    the other groups, group by group (lightest first) and in random order inside a group, are poured into
    the urns' remaining room as in Algorithm 1.

    Args:
        linkage_matrix: scipy ``linkage`` output over the K clients.
        p: the clients' data shares (sum 1).
        m: number of urns (clients per round).
        rng: shuffles the clients inside each poured group.

    Returns:
        m x K urn probabilities (rows sum to 1, column k sums to m p_k).
    """
    groups = _cut_by_mass(linkage_matrix, p, 1.0 / m)
    groups.sort(key=lambda g: float(p[g].sum()))  # stable: equal masses keep the tree's order
    urns = np.zeros((m, len(p)))
    kept, rest = groups[len(groups) - m :], groups[: len(groups) - m]
    overflow: list[int] = []
    for j, group in enumerate(kept):
        if m * p[group].sum() <= 1 + _EPS:
            urns[j, group] = m * p[group]
        else:  # only a single client with m p_k > 1 (the cut keeps singletons): it is poured over several urns
            overflow.extend(group)
    poured = overflow + [int(c) for g in rest for c in rng.permutation(g)]
    pour(urns, poured, m * p - urns.sum(axis=0))
    return _normalised(urns)


def _cut_by_mass(linkage_matrix: np.ndarray, p: np.ndarray, limit: float) -> list[list[int]]:
    """Groups of the dendrogram whose total mass is <= ``limit``, merging bottom-up (singletons always kept)."""
    k = len(p)
    members: list[list[int]] = [[c] for c in range(k)]
    alive = set(range(k))
    for a, b in linkage_matrix[:, :2].astype(int):
        merged = members[a] + members[b]
        members.append(merged)
        if a in alive and b in alive and p[merged].sum() <= limit + _EPS:
            alive -= {a, b}
            alive.add(len(members) - 1)
    return [members[g] for g in sorted(alive)]


def draw_from_urns(urns: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One client per urn, with probability its share of the urn; returns (indices, their probabilities)."""
    ids = np.array([rng.choice(urns.shape[1], p=row) for row in urns], dtype=np.int64)
    return ids, urns[np.arange(len(urns)), ids]


def facility_location_greedy(dist: np.ndarray, m: int, candidates: Sequence[int]) -> list[int]:
    """Lazy greedy for min_S sum_k min_{i in S} dist[k, i] over S subset of ``candidates``, |S| = m.

    Maximises the submodular coverage F(S) = sum_k (D - min_{i in S} dist[k, i]) with D = max(dist), whose
    marginal gains only shrink as S grows (Minoux's lazy evaluation: a stale upper bound that still beats
    every other bound is the true maximum). Ties go to the lower candidate position.

    >>> d = np.array([[0, 1, 5], [1, 0, 5], [5, 5, 0]], dtype=float)
    >>> facility_location_greedy(d, 2, [0, 1, 2])
    [0, 2]
    """
    nearest = np.full(dist.shape[0], float(dist.max()) if dist.size else 0.0)
    heap = [(-_gain(dist, nearest, c), pos, c) for pos, c in enumerate(candidates)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < m:
        _, pos, c = heapq.heappop(heap)
        gain = _gain(dist, nearest, c)
        if not heap or (-gain, pos) <= heap[0][:2]:  # also ties: the lower position wins, as in plain greedy
            chosen.append(c)
            np.minimum(nearest, dist[:, c], out=nearest)
        else:
            heapq.heappush(heap, (-gain, pos, c))
    return chosen


def _gain(dist: np.ndarray, nearest: np.ndarray, c: int) -> float:
    return float(np.maximum(nearest - dist[:, c], 0.0).sum())

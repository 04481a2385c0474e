"""Contract tests over every registered selector (new registrations are covered automatically)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_selection
from tests import selection_fakes
from tests.selection_fakes import FakeLoop, K


def _build(name: str) -> ClientSelector:
    selector = SELECTORS.build(name)
    if getattr(selector, "needs_profiles", False) and selection_fakes.PROFILE_FACTORY is None:
        pytest.skip(f"{name} needs system profiles and tests/selection_fakes.PROFILE_FACTORY is not set")
    return selector


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


@pytest.mark.parametrize("name", SELECTORS.names())
def test_selects_k_available_clients_every_round(name: str) -> None:
    selector = _build(name)
    for ctx, selection in FakeLoop(seed=1).run(selector, range(8)):
        check_selection(selection, ctx, name, selector.allows_duplicates)  # raises on any breach
        assert len(selection.ids) == K
        assert selection.ids.dtype.kind == "i"
        assert set(selection.ids.tolist()) <= set(ctx.available.tolist())
        if not selector.allows_duplicates:
            assert len(set(selection.ids.tolist())) == K
        for extra in (selection.probs, selection.scores, selection.weights):
            assert extra is None or len(extra) == K
        if selection.weights is not None:
            assert (selection.weights > 0).all()


@pytest.mark.parametrize("name", SELECTORS.names())
def test_unavailable_clients_are_never_chosen_even_when_few_are_online(name: str) -> None:
    selector = _build(name)
    loop = FakeLoop(seed=2)
    loop.available = lambda r: np.array([1, 4, 6, 9, 11]) if r % 2 else np.array([0, 2, 3, 5, 7])  # type: ignore
    for ctx, selection in loop.run(selector, range(6)):
        assert set(selection.ids.tolist()) <= set(ctx.available.tolist())
    assert all(set(ids) <= {0, 1, 2, 3, 4, 5, 6, 7, 9, 11} for ids in loop.probed)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_same_seed_same_selections(name: str) -> None:
    runs = [[s for _, s in FakeLoop(seed=3).run(_build(name), range(6))] for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a.ids, b.ids)
        assert _same(a.weights, b.weights)
        assert _same(a.probs, b.probs)
        assert _same(a.scores, b.scores)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    # Prepare: a selector that has learnt for 4 rounds, and a fresh one restored from its state_dict
    # (with a copy of the loop's history and generator, which the orchestrator checkpoints itself).
    original = _build(name)
    loop = FakeLoop(seed=4)
    loop.run(original, range(4))
    restored = SELECTORS.build(name)
    restored.load_state_dict(copy.deepcopy(original.state_dict()))
    twin = copy.deepcopy(loop)
    # Execute: both continue for 5 more rounds.
    a = [s for _, s in loop.run(original, range(4, 9))]
    b = [s for _, s in twin.run(restored, range(4, 9))]
    # Assert
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.ids, y.ids)
        assert _same(x.weights, y.weights)
        assert _same(x.scores, y.scores)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_one_client_per_round_keeps_the_method_exploring(name: str) -> None:
    # Prepare: k=1 of 30 always-available clients, 60 rounds (Oort's int(k eps) = 0 or AFL's int(0.9 k) = 0
    # once turned a method into "the same client forever" or into uniform sampling without saying so).
    selector = _build(name)
    loop = FakeLoop(seed=5, num_clients=30)
    loop.available = lambda r: np.arange(30)  # type: ignore[method-assign]
    # Execute
    picks = [int(s.ids[0]) for _, s in loop.run(selector, range(60), k=1)]
    # Assert: no client takes more than 90% of the rounds, unless the class says its rule is deterministic.
    top = np.bincount(picks).max()
    if getattr(type(selector), "deterministic", False):
        assert "deterministic" in (type(selector).__doc__ or "").lower(), f"{name}: say why it is deterministic"
    else:
        assert top <= 0.9 * 60, f"{name} picked one client in {top} of 60 rounds at k=1"


@pytest.mark.parametrize("name", SELECTORS.names())
def test_one_client_per_round_is_a_valid_selection(name: str) -> None:
    selector = _build(name)
    for ctx, selection in FakeLoop(seed=5).run(selector, range(6), k=1):
        check_selection(selection, ctx, name, selector.allows_duplicates)
        assert len(selection.ids) == 1


@pytest.mark.parametrize("name", SELECTORS.names())
def test_docstring_first_line_cites_a_paper(name: str) -> None:
    line = SELECTORS.describe(name)
    assert "http" in line, line
    assert any(str(year) in line for year in range(2000, 2030)), line  # LinUCB is from 2010


def test_readme_methods_table_lists_every_selector() -> None:
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    # The package's own selectors: other tests register plug-ins of their own (from test modules) at run time.
    builtin = [n for n in SELECTORS.names() if SELECTORS.get(n).__module__.startswith("csfl_fabric.")]
    missing = [name for name in builtin if f"| `{name}` |" not in readme]
    assert not missing, f"add these selectors to the README's methods table: {missing}"

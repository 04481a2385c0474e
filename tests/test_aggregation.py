import gc
import io
import itertools
import weakref

import numpy as np
import pytest
import torch

import csfl_fabric.aggregation  # noqa: F401  (registers the aggregators)
from csfl_fabric.aggregation import Aggregator, FedAvg, weighted_mean
from csfl_fabric.registry import AGGREGATORS
from csfl_fabric.training.flat import ChunkRow

SHAPES = {"w": (3, 2), "b": (2,)}


def _params(gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {k: scale * torch.randn(s, generator=gen, dtype=torch.float64).float() for k, s in SHAPES.items()}


def _np_mean(clients, weights, k: str) -> np.ndarray:
    return sum(w * c[k].numpy().astype(np.float64) for c, w in zip(clients, weights, strict=True)) / sum(weights)


def _round(agg: Aggregator, global_params, clients, weights):
    agg.reset(global_params)
    for p, w in zip(clients, weights, strict=True):
        agg.update(p, w)
    return agg.compute()


def test_expected_aggregators_are_registered():
    assert {"fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"} <= set(AGGREGATORS.names())


def test_fedavg_matches_hand_computed_weighted_mean():
    # Prepare
    g = torch.Generator().manual_seed(0)
    global_params = _params(g)
    clients = [_params(g) for _ in range(3)]
    weights = [10.0, 30.0, 60.0]
    # Execute
    new = _round(FedAvg(), global_params, clients, weights)
    # Assert
    for k in SHAPES:
        expected = _np_mean(clients, weights, k)
        np.testing.assert_allclose(new[k].numpy(), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(new[k].numpy(), weighted_mean([c[k] for c in clients], weights).numpy(), rtol=1e-6)


def test_fedavg_does_not_depend_on_update_order():
    g = torch.Generator().manual_seed(1)
    global_params = _params(g)
    clients = [_params(g) for _ in range(4)]
    weights = [1.0, 7.0, 3.0, 5.0]
    results = [
        _round(FedAvg(), global_params, [clients[i] for i in order], [weights[i] for i in order])
        for order in itertools.permutations(range(4))
    ]
    for r in results[1:]:
        for k in SHAPES:
            torch.testing.assert_close(r[k], results[0][k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_place", [True, False])
def test_reduce_with_doubling_leaves_mean_unchanged(in_place):
    g = torch.Generator().manual_seed(2)
    global_params = _params(g)
    clients = [_params(g) for _ in range(3)]
    expected = _round(FedAvg(), global_params, clients, [1.0, 2.0, 3.0])

    def double(t: torch.Tensor) -> torch.Tensor | None:
        if in_place:
            t.mul_(2)
            return None
        return t * 2

    agg = FedAvg()
    agg.reset(global_params)
    for p, w in zip(clients, [1.0, 2.0, 3.0], strict=True):
        agg.update(p, w)
    agg.reduce(double)
    new = agg.compute()
    for k in SHAPES:
        torch.testing.assert_close(new[k], expected[k])


def test_reduce_combines_partial_sums_like_two_processes():
    g = torch.Generator().manual_seed(3)
    global_params = _params(g)
    clients, weights = [_params(g) for _ in range(4)], [2.0, 1.0, 4.0, 3.0]
    expected = _round(FedAvg(), global_params, clients, weights)
    ranks = [FedAvg(), FedAvg()]
    for r, agg in enumerate(ranks):
        agg.reset(global_params)
        for p, w in zip(clients[r::2], weights[r::2], strict=True):
            agg.update(p, w)
    # Emulate a sum all-reduce: each rank's buffers are handed to fn in the same order.
    partial = [[], []]
    for r, agg in enumerate(ranks):
        agg.reduce(lambda t, r=r: partial[r].append(t.clone()))
    for agg in ranks:
        it = iter([a + b for a, b in zip(*partial, strict=True)])
        agg.reduce(lambda t, it=it: next(it))
    for agg in ranks:
        new = agg.compute()
        for k in SHAPES:
            torch.testing.assert_close(new[k], expected[k])


def _chunk(clients: list[dict[str, torch.Tensor]]) -> list[ChunkRow]:
    """The rows a cohort chunk yields for ``clients``, plus a buffer ``n`` every client keeps (stride 0)."""
    chunk = {k: torch.stack([c[k] for c in clients]) for k in SHAPES}
    chunk["n"] = torch.full((1,), 0.5).expand(len(clients), 1)
    rows = [{k: chunk[k][i] for k in [*SHAPES, "n"]} for i in range(len(clients))]
    return [ChunkRow.of(row, chunk, i) for i, row in enumerate(rows)]


def test_chunk_rows_fold_in_like_separate_clients():
    """Rows of a cohort chunk are folded in with one product per entry when the chunk ends: same mean as one
    add per client, a skipped (NaN) row and a weight-0 row left out, rows of two chunks and a plain dict mixed."""
    g = torch.Generator().manual_seed(4)
    global_params = {**_params(g), "n": torch.full((1,), 0.5)}
    clients = [{**_params(g), "n": torch.full((1,), 0.5)} for _ in range(7)]
    first, second = _chunk(clients[:4]), _chunk(clients[4:6])
    first[1]["w"].fill_(float("nan"))  # a diverged client: the guard never hands it to `update`
    first[2]["b"].fill_(float("inf"))
    weights = [1.0, 0.0, 0.0, 3.0, 2.0, 5.0, 4.0]
    agg = FedAvg()
    agg.reset(global_params)
    for params, w in [(first[0], 1.0), (first[2], 0.0), (first[3], 3.0), (second[0], 2.0), (clients[6], 4.0),
                      (second[1], 5.0)]:
        agg.update(params, w)
    new = agg.compute()
    kept = [0, 3, 4, 5, 6]
    for k in SHAPES:
        expected = _np_mean([clients[i] for i in kept], [weights[i] for i in kept], k)
        np.testing.assert_allclose(new[k].numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new["n"], global_params["n"])


def test_chunk_rows_in_another_order_than_the_chunks_fold_in_like_separate_clients():
    """The cohort yields its clients in the order given, not in its rows' order: a block folded in out of order
    (and a block that starts past row 0) gives the weighted mean with each weight on its own row."""
    g = torch.Generator().manual_seed(6)
    global_params = {**_params(g), "n": torch.full((1,), 0.5)}
    clients = [{**_params(g), "n": torch.full((1,), 0.5)} for _ in range(5)]
    rows = _chunk(clients)
    order, weights = [3, 1, 4, 2], [1.0, 2.0, 3.0, 4.0]  # rows 1..4, shuffled; row 0 belongs to no one here
    agg = FedAvg()
    agg.reset(global_params)
    for i, w in zip(order, weights, strict=True):
        agg.update(rows[i], w)
    new = agg.compute()
    for k in SHAPES:
        np.testing.assert_allclose(new[k].numpy(), _np_mean([clients[i] for i in order], weights, k), rtol=1e-5,
                                   atol=1e-6)


def test_chunk_rows_are_folded_before_reduce():
    g = torch.Generator().manual_seed(5)
    global_params, clients = _params(g), [_params(g) for _ in range(3)]
    expected = _round(FedAvg(), global_params, clients, [1.0, 2.0, 3.0])
    agg = FedAvg()
    agg.reset(global_params)
    chunk = [{k: v for k, v in row.items() if k in SHAPES} for row in _chunk(clients)]
    for row, src, w in zip(chunk, _chunk(clients), [1.0, 2.0, 3.0], strict=True):
        agg.update(ChunkRow.of(row, src.chunk, src.index), w)
    sums = []
    agg.reduce(lambda t: sums.append(t.clone()))  # what a collective would send: the rows must be in it
    assert sums[1].item() == 6.0
    assert sums[0].abs().sum() > 0
    new = agg.compute()
    for k in SHAPES:
        torch.testing.assert_close(new[k], expected[k])


# --- server optimizers against numpy references (Reddi et al. 2021, Algorithm 2) --------------------------------


def _np_server(name: str, hp: dict, x: np.ndarray, mean: np.ndarray, st: dict) -> np.ndarray:
    delta = mean - x
    lr = hp.get("server_lr")
    if name == "fedavg":
        return x + lr * delta
    if name == "fedavgm":
        st["v"] = hp["momentum"] * st.get("v", 0.0) + delta
        return x + lr * st["v"]
    b1, b2, tau = hp["beta1"], hp.get("beta2", 0.0), hp["tau"]
    m = b1 * st.get("m", 0.0) + (1 - b1) * delta
    v = st.get("v", np.full_like(x, tau**2))
    if name == "fedadagrad":
        v = v + delta**2
    elif name == "fedadam":
        v = b2 * v + (1 - b2) * delta**2
    else:
        v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
    st["m"], st["v"] = m, v
    return x + lr * m / (np.sqrt(v) + tau)


HYPER = {
    "fedavg": {"server_lr": 0.7},
    "fedavgm": {"server_lr": 0.5, "momentum": 0.9},
    "fedadagrad": {"server_lr": 0.1, "beta1": 0.5, "tau": 1e-2},
    "fedadam": {"server_lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
}


@pytest.mark.parametrize("name", sorted(HYPER))
def test_server_optimizer_matches_numpy_reference(name):
    g = torch.Generator().manual_seed(4)
    agg = AGGREGATORS.build(name, **HYPER[name])
    x = _params(g)
    x_np = {k: v.numpy().astype(np.float64) for k, v in x.items()}
    states = {k: {} for k in SHAPES}
    for _ in range(3):
        clients, weights = [_params(g) for _ in range(3)], [3.0, 1.0, 2.0]
        x = _round(agg, x, clients, weights)
        for k in SHAPES:
            mean = _np_mean(clients, weights, k)
            x_np[k] = _np_server(name, HYPER[name], x_np[k], mean, states[k])
            np.testing.assert_allclose(x[k].numpy(), x_np[k], rtol=1e-4, atol=1e-5)
    assert agg.num_rounds == 3


@pytest.mark.parametrize("name", sorted(HYPER))
def test_state_dict_round_trip_continues_identically(name):
    g = torch.Generator().manual_seed(5)
    rounds = [([_params(g) for _ in range(3)], [1.0, 2.0, 3.0]) for _ in range(4)]
    x0 = _params(g)
    a = AGGREGATORS.build(name, **HYPER[name])
    x = x0
    for clients, weights in rounds[:2]:
        x = _round(a, x, clients, weights)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = AGGREGATORS.build(name, **HYPER[name])
    b.load_state_dict(torch.load(buf))
    xa = xb = x
    for clients, weights in rounds[2:]:
        xa, xb = _round(a, xa, clients, weights), _round(b, xb, clients, weights)
    assert all(torch.equal(xa[k], xb[k]) for k in SHAPES)
    assert a.num_rounds == b.num_rounds == 4


def test_load_state_dict_of_another_aggregator_raises():
    with pytest.raises(ValueError, match="FedAdam"):
        AGGREGATORS.build("fedyogi").load_state_dict(AGGREGATORS.build("fedadam").state_dict())


def test_zero_total_weight_raises():
    g = torch.Generator().manual_seed(6)
    agg = FedAvg()
    agg.reset(_params(g))
    agg.update(_params(g), 0.0)
    with pytest.raises(ValueError, match="total aggregation weight"):
        agg.compute()
    agg.reset(_params(g))
    with pytest.raises(ValueError, match="total aggregation weight"):
        agg.compute()
    with pytest.raises(ValueError, match="total aggregation weight"):
        weighted_mean([torch.ones(2)], [0.0])


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_bad_weight_raises(weight):
    g = torch.Generator().manual_seed(7)
    agg = FedAvg()
    agg.reset(_params(g))
    with pytest.raises(ValueError, match="weight"):
        agg.update(_params(g), weight)


def test_zero_weight_client_with_nans_is_skipped():
    g = torch.Generator().manual_seed(8)
    global_params, good = _params(g), _params(g)
    agg = FedAvg()
    agg.reset(global_params)
    agg.update(good, 2.0)
    agg.update({k: torch.full_like(v, float("nan")) for k, v in good.items()}, 0.0)
    new = agg.compute()
    assert all(torch.equal(new[k], good[k]) for k in SHAPES)


def test_mismatched_keys_raise():
    g = torch.Generator().manual_seed(9)
    agg = FedAvg()
    agg.reset(_params(g))
    with pytest.raises(ValueError, match="missing"):
        agg.update({"w": torch.zeros(3, 2)}, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        agg.update({**_params(g), "extra": torch.zeros(1)}, 1.0)


@pytest.mark.parametrize("name", sorted(HYPER))
def test_dtypes_preserved_and_non_float_buffers_keep_global_value(name):
    global_params = {
        "half": torch.tensor([1.0, 2.0], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -1.0], dtype=torch.bfloat16),
        "double": torch.tensor([0.5], dtype=torch.float64),
        "num_batches_tracked": torch.tensor(7, dtype=torch.long),
    }
    clients = [
        {k: (v + i + 1 if v.is_floating_point() else v + 10 * (i + 1)) for k, v in global_params.items()}
        for i in range(2)
    ]
    new = _round(AGGREGATORS.build(name), global_params, clients, [1.0, 1.0])
    assert {k: v.dtype for k, v in new.items()} == {k: v.dtype for k, v in global_params.items()}
    assert new["num_batches_tracked"].item() == 7
    if name == "fedavg":
        torch.testing.assert_close(new["half"], torch.tensor([2.5, 3.5], dtype=torch.float16))


def test_invalid_params_name_the_config_key():
    with pytest.raises(ValueError, match=r"`aggregator.params.server_lr`.*-1"):
        AGGREGATORS.build("fedavg", server_lr=-1)
    with pytest.raises(ValueError, match=r"`aggregator.params.beta1`.*1.0"):
        AGGREGATORS.build("fedadam", beta1=1.0)
    with pytest.raises(ValueError, match=r"`aggregator.params.beta2`"):
        AGGREGATORS.build("fedyogi", beta2=-0.1)
    with pytest.raises(ValueError, match=r"`aggregator.params.tau`"):
        AGGREGATORS.build("fedadagrad", tau=0.0)
    with pytest.raises(ValueError, match=r"`aggregator.params.momentum`"):
        AGGREGATORS.build("fedavgm", momentum=1.5)


def test_update_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        FedAvg().update({"w": torch.zeros(1)}, 1.0)


# --- contract test: every registered aggregator ----------------------------------------------------------------


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregator_contract(name):
    # Prepare
    agg = AGGREGATORS.build(name)
    assert isinstance(agg, Aggregator)
    g = torch.Generator().manual_seed(10)
    global_params = {**_params(g), "count": torch.tensor(3)}
    # Execute: clients that return the global unchanged give a zero pseudo-gradient.
    agg.reset(global_params)
    client = {k: v.clone() for k, v in global_params.items()}
    ref = weakref.ref(client["w"])
    agg.update(client, 5.0)
    del client
    gc.collect()
    new = agg.compute()
    # Assert
    assert ref() is None, "the aggregator kept a reference to a client's params"
    assert new.keys() == global_params.keys()
    for k, v in global_params.items():
        assert new[k].shape == v.shape
        assert new[k].dtype == v.dtype
        torch.testing.assert_close(new[k], v)
    assert agg.compute() is new  # a second compute does not step the server optimizer again
    state = agg.state_dict()
    agg.load_state_dict(state)
    assert agg.state_dict()["num_rounds"] == 1
    assert "https://" in (type(agg).__doc__ or ""), "aggregator docstrings cite their paper with a link"

"""Flat params: the model's weights in one buffer, and the one-operation paths that use it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from csfl_fabric.aggregation import FedAdam, FedAvg
from csfl_fabric.data.store import ClientStore
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.engine.guard import all_finite
from csfl_fabric.state import ClientResult
from csfl_fabric.training.cohort import CohortTrainer
from csfl_fabric.training.flat import FlatParams, Layout, flat_of, flatten_module, l2_norm
from csfl_fabric.training.sequential import ClientTrainer, TrainSettings, make_optimizer


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_flatten_module_keeps_state_and_shares_the_models_memory() -> None:
    model = _bn_model()
    model(torch.randn(6, 5))  # moves BatchNorm's running statistics off their initial values
    reference = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    flat = flatten_module(model)
    assert flat is not None
    after = model.state_dict()
    assert list(after) == list(before) == list(flat)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # Parameters and floating-point buffers live in the buffer: writing it writes the model.
    assert flat.layout.names == tuple(k for k, v in before.items() if v.is_floating_point())
    assert flat.flat.numel() == sum(v.numel() for v in before.values() if v.is_floating_point())
    flat.flat.add_(1.0)
    assert torch.equal(model[0].weight.detach(), before["0.weight"] + 1)
    assert torch.equal(model[1].running_mean, before["1.running_mean"] + 1)
    assert torch.equal(flat["1.num_batches_tracked"], before["1.num_batches_tracked"])  # not floating point
    # Still the same module: same outputs, gradients reach the parameters, BatchNorm updates the buffer in place.
    flat.flat.sub_(1.0)
    x = torch.randn(6, 5)
    assert torch.allclose(model(x), reference(x))
    model(x).sum().backward()
    assert model[0].weight.grad is not None
    assert not torch.equal(flat["1.running_mean"], before["1.running_mean"])


def test_flatten_module_leaves_shared_parameters_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied: two entries of the state dict, one tensor
    assert flatten_module(model) is None
    assert model[1].weight is model[0].weight


def test_flat_params_pack_clone_and_layout_matching() -> None:
    params = {"w": torch.arange(6.0).view(2, 3), "steps": torch.tensor(3), "b": torch.tensor([7.0, 8.0])}
    packed = FlatParams.pack(params)
    assert packed.flat.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0]
    assert list(packed) == ["w", "steps", "b"]
    assert packed.layout.names == ("w", "b")
    shallow = packed.copy()
    assert isinstance(shallow, FlatParams)
    assert shallow.flat is packed.flat
    twin = packed.clone()
    twin.flat.zero_()
    assert packed["b"].tolist() == [7.0, 8.0]  # a clone has its own buffer
    assert flat_of(twin, packed.layout) is twin.flat
    assert flat_of(params, packed.layout) is None  # a plain dict takes the per-tensor path
    assert flat_of(packed, Layout.of({"w": torch.zeros(6)})) is None  # another layout too


@pytest.mark.parametrize(
    "settings",
    [
        TrainSettings(batch_size=4, lr=0.1, local_epochs=2),
        TrainSettings(batch_size=4, lr=0.1, momentum=0.9, weight_decay=1e-2, local_epochs=2),
        TrainSettings(batch_size=4, lr=0.01, optimizer="adam", weight_decay=1e-2, local_epochs=2),
    ],
    ids=["sgd", "sgd-momentum-wd", "adam"],
)
def test_fit_matches_a_plain_torch_optim_loop(settings: TrainSettings) -> None:
    """The trainer's flat model and functional SGD step give what torch.optim gives on the original model."""
    torch.manual_seed(1)
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    store = ClientStore(x, y, [np.arange(0, 11), np.arange(11, 30)], seed=0)
    reference = _bn_model()
    trainer = ClientTrainer(Fabric(accelerator="cpu", devices=1), copy.deepcopy(reference), settings, num_classes=3)
    start = trainer.global_params()
    assert isinstance(start, FlatParams)
    for client_id in (0, 1):  # the second client checks that optimizer state does not leak between clients
        client = store.client(client_id, round_idx=0)
        params, _ = trainer.fit(start, client)
        model = copy.deepcopy(reference)
        model.load_state_dict(start)
        optimizer = make_optimizer(list(model.parameters()), settings)
        for xb, yb in client.batches(settings.batch_size, epochs=settings.local_epochs):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        expected = model.state_dict()
        for k in expected:
            torch.testing.assert_close(params[k], expected[k], rtol=1e-6, atol=1e-6)


def _client_params(global_params: FlatParams, seed: int) -> FlatParams:
    out = global_params.clone()
    out.flat.add_(torch.randn(out.flat.shape, generator=torch.Generator().manual_seed(seed)))
    return out


@pytest.mark.parametrize("aggregator", [FedAvg, FedAdam])
def test_aggregator_flat_path_matches_the_per_tensor_path(aggregator: type) -> None:
    global_params = FlatParams.pack({"w": torch.randn(3, 2), "n": torch.tensor(5), "b": torch.randn(4)})
    clients = [(_client_params(global_params, s), w) for s, w in ((1, 3.0), (2, 1.0), (3, 0.0))]
    flat_agg, dict_agg = aggregator(), aggregator()
    flat_agg.reset(global_params)
    dict_agg.reset(dict(global_params))  # a plain dict: the per-tensor path throughout
    for params, weight in clients:
        flat_agg.update(params, weight)
        dict_agg.update(dict(params), weight)
    flat_new, dict_new = flat_agg.compute(), dict_agg.compute()
    assert isinstance(flat_new, FlatParams)
    assert flat_new.layout == global_params.layout
    assert not isinstance(dict_new, FlatParams)
    for k in dict_new:
        torch.testing.assert_close(flat_new[k], dict_new[k], rtol=1e-6, atol=1e-7)
    if aggregator is FedAvg:  # the weighted mean, by hand
        mean = (3.0 * clients[0][0]["w"] + clients[1][0]["w"]) / 4.0
        torch.testing.assert_close(flat_new["w"], mean)
    assert torch.equal(flat_new["n"], global_params["n"])


def test_all_finite_on_flat_params_flags_nan_inf_and_overflow() -> None:
    params = FlatParams.pack({"w": torch.ones(3), "b": torch.zeros(2)})
    assert all_finite(params)
    for bad in (float("nan"), float("inf"), 1e30):  # 1e30 squared overflows: a diverged client as well
        broken = params.clone()
        broken["b"][1] = bad
        assert not all_finite(broken)


def test_l2_norm_of_half_precision_does_not_overflow() -> None:
    half = torch.full((10_000,), 1000.0, dtype=torch.float16)  # norm 1e5, past float16's 65504
    assert l2_norm(half).dtype == torch.float32
    assert l2_norm(half).item() == pytest.approx(1e5, rel=1e-5)
    rows = torch.randn(3, 50)
    torch.testing.assert_close(l2_norm(rows, dim=1), rows.double().norm(dim=1).float())


@pytest.mark.parametrize("backend", ["sequential", "cohort"])
def test_trainers_report_the_norm_of_each_clients_params(backend: str) -> None:
    """The norm read with the losses is what the fault guard checks instead of the params themselves."""
    torch.manual_seed(2)
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    store = ClientStore(x, y, [np.arange(0, 7), np.arange(7, 30)], seed=0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    fabric = Fabric(accelerator="cpu", devices=1)
    settings = TrainSettings(batch_size=4, lr=0.1)
    trainer = (ClientTrainer(fabric, model, settings, 3) if backend == "sequential"
               else CohortTrainer(fabric, model, settings, 3, cohort_size=2))
    start = trainer.global_params()
    for params, result in trainer.fit_many(start, [store.client(0, 0), store.client(1, 0)]):
        expected = torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in params.values()])).item()
        assert result.param_norm == pytest.approx(expected, rel=1e-5)
        assert not result.diverged
    for bad in (float("nan"), float("inf")):
        assert ClientResult(0, 1, 1, 1, loss=0.5, loss_sq_sum=0.25, param_norm=bad).diverged


def test_channels_last_weights_stay_channels_last_views_of_the_buffer() -> None:
    """`train.channels_last` (sequential backend): conv weights keep their channels-last order in the buffer."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(5, 2, 6, 6)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    flat = flatten_module(model)
    assert flat is not None
    weight = model[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert weight.untyped_storage().data_ptr() == flat.flat.untyped_storage().data_ptr()
    torch.testing.assert_close(model(x), expected)
    # The trainer applies it by default and not in the cohort backend, whose vmap gains nothing from it.
    fabric = Fabric(accelerator="cpu", devices=1)
    sequential = ClientTrainer(fabric, copy.deepcopy(model), TrainSettings(), num_classes=3)
    cohort = CohortTrainer(fabric, copy.deepcopy(model).to(memory_format=torch.contiguous_format), TrainSettings(), 3)
    assert sequential.model.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert cohort.model.module[0].weight.is_contiguous()
    off = ClientTrainer(fabric, nn.Sequential(nn.Conv2d(2, 4, 3)), TrainSettings(channels_last=False), num_classes=3)
    assert off.model.module[0].weight.is_contiguous()

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from csfl_fabric.data.store import ClientStore
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.training.sequential import ClientTrainer, TrainSettings


def _setup(settings: TrainSettings, n: int = 40) -> tuple[ClientTrainer, ClientStore]:
    torch.manual_seed(0)
    x = torch.randn(n, 5)
    y = (x[:, 0] > 0).long()
    store = ClientStore(x, y, [np.arange(0, 25), np.arange(25, n)], seed=0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    fabric = Fabric(accelerator="cpu", devices=1)
    return ClientTrainer(fabric, model, settings, num_classes=2), store


def test_fit_changes_params_and_reports_counts_and_loss() -> None:
    trainer, store = _setup(TrainSettings(batch_size=10, lr=0.1, local_epochs=2))
    start = trainer.global_params()
    snapshot = {k: v.clone() for k, v in start.items()}
    params, result = trainer.fit(start, store.client(0, round_idx=0))
    assert result.client_id == 0
    assert result.num_samples == 25
    assert result.num_steps == 6  # ceil(25 / 10) batches x 2 epochs
    assert result.samples_processed == 50
    assert np.isfinite(result.loss)
    assert result.loss > 0
    assert result.loss_sq_sum >= result.loss**2 * 50 * 0.99  # Jensen: mean of squares >= square of mean
    assert any(not torch.equal(params[k], start[k]) for k in start)
    # The global params handed in are not modified by training.
    assert all(torch.equal(start[k], snapshot[k]) for k in start)


def test_fit_starts_every_client_from_the_given_params() -> None:
    trainer, store = _setup(TrainSettings(batch_size=10, lr=0.1, momentum=0.9))
    start = trainer.global_params()
    first = {k: v.clone() for k, v in trainer.fit(start, store.client(0, 0))[0].items()}
    trainer.fit(start, store.client(1, 0))
    again = trainer.fit(start, store.client(0, 0))[0]
    # Same start, same batches, fresh momentum: identical result regardless of what ran in between.
    for k in first:
        assert torch.equal(first[k], again[k])


def test_local_steps_override_epochs() -> None:
    trainer, store = _setup(TrainSettings(batch_size=4, local_steps=3))
    _, result = trainer.fit(trainer.global_params(), store.client(0, 0))
    assert result.num_steps == 3
    assert result.samples_processed == 12


def test_fedprox_mu_pulls_towards_the_global_model() -> None:
    def drift(mu: float) -> float:
        trainer, store = _setup(TrainSettings(batch_size=5, lr=0.2, local_epochs=3, mu=mu))
        start = trainer.global_params()
        params, _ = trainer.fit(start, store.client(0, 0))
        return sum(float((params[k] - start[k]).norm()) for k in start)

    assert drift(5.0) < drift(0.0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_evaluate_and_probe_losses(optimizer: str) -> None:
    trainer, store = _setup(TrainSettings(optimizer=optimizer, lr=0.05, local_epochs=5))
    start = trainer.global_params()
    x, y = store.client(0, 0).arrays()
    before = trainer.evaluate(start, x, y)
    params, _ = trainer.fit(start, store.client(0, 0))
    trained = {k: v.clone() for k, v in params.items()}
    after = trainer.evaluate(trained, x, y)
    assert set(before) == {"eval/acc", "eval/loss", "eval/f1", "eval/precision", "eval/recall"}
    assert after["eval/loss"] < before["eval/loss"]
    losses = trainer.losses(trained, [store.client(0, 0), store.client(1, 0)])
    assert losses.shape == (2,)
    assert losses[0] == pytest.approx(after["eval/loss"], rel=1e-5)


def test_probe_on_a_mini_batch_uses_the_clients_first_seeded_batch() -> None:
    trainer, store = _setup(TrainSettings())
    params = trainer.global_params()
    client = store.client(0, 3)
    xb, yb = next(client.batches(7))
    with torch.no_grad():
        expected = nn.functional.cross_entropy(trainer.model.module(xb), yb).item()
    assert trainer.losses(params, [client], batch_size=7)[0] == pytest.approx(expected, rel=1e-6)
    assert trainer.losses(params, [client], batch_size=7)[0] != pytest.approx(trainer.losses(params, [client])[0])


def _cnn_trainer(settings: TrainSettings, sizes: tuple[int, ...]) -> tuple[ClientTrainer, ClientStore, list[bool]]:
    """The speed issue's CNN (16/32 channels, ~0.68 MFLOP a digit) and a record of oneDNN's switch at each conv1."""
    from csfl_fabric.models import cnn

    torch.manual_seed(0)
    x = torch.randn(sum(sizes), 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    bounds = np.cumsum((0, *sizes))
    store = ClientStore(x, y, [np.arange(a, b) for a, b in zip(bounds, bounds[1:], strict=False)], seed=0)
    model = cnn((1, 8, 8), 2, width=16, hidden=64)
    onednn: list[bool] = []
    model.conv1.register_forward_pre_hook(lambda *_: onednn.append(torch.backends.mkldnn.enabled))
    return ClientTrainer(Fabric(accelerator="cpu", devices=1), model, settings, num_classes=2), store, onednn


def test_tiny_batches_run_native_convolutions_and_train_the_same() -> None:
    # 8e6 FLOPs / ~0.68 MFLOP a digit: batches of up to 11 digits go native. Client 0: 16 + 4, client 1: 11.
    settings = TrainSettings(batch_size=16, lr=0.1)
    trainer, store, onednn = _cnn_trainer(settings, (20, 11))
    start = trainer.global_params()
    native = [{k: v.clone() for k, v in trainer.fit(start, store.client(c, 0))[0].items()} for c in (0, 1)]
    assert onednn[-3:] == [True, False, False]  # the FLOP count's forward ran first, with oneDNN
    assert torch.backends.mkldnn.enabled  # switched back on after the last batch
    always, _, flags = _cnn_trainer(TrainSettings(batch_size=16, lr=0.1, native_conv_flops=0), (20, 11))
    reference = [{k: v.clone() for k, v in always.fit(start, store.client(c, 0))[0].items()} for c in (0, 1)]
    assert all(flags)
    for got, want in zip(native, reference, strict=True):
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=k)


def test_the_onednn_switch_is_restored_when_a_batch_raises() -> None:
    trainer, store, _ = _cnn_trainer(TrainSettings(batch_size=4, lr=0.1), (4,))

    def fail(*_: object) -> None:
        if not torch.backends.mkldnn.enabled:  # the training forward, not the FLOP count's before it
            raise RuntimeError("boom")

    trainer.model.module.fc2.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(trainer.global_params(), store.client(0, 0))
    assert torch.backends.mkldnn.enabled

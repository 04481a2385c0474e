"""DivFL as its reference code runs it: full-batch gradients at the received model, collected at round 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from csfl_fabric.data.store import ClientStore
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.registry import SELECTORS
from csfl_fabric.training.sequential import ClientTrainer, TrainSettings
from tests.selection_fakes import FakeLoop

from .conftest import SMOKE


def _softmax_gradient(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean cross-entropy gradient of a linear softmax model by hand: (softmax(x W^T + b) - onehot(y))^T x / n."""
    z = x @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return np.concatenate([(p.T @ x / len(y)).ravel(), p.mean(axis=0)])


@pytest.mark.parametrize("eval_batch_size", [1, 1024])
def test_trainer_gradient_is_the_full_batch_gradient_by_hand(eval_batch_size: int) -> None:
    # Prepare: a 2 -> 2 linear model at zero, one client with two samples (summed over chunks of 1 or at once).
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    y = torch.tensor([0, 1])
    store = ClientStore(x, y, [np.array([0, 1])], seed=0)
    trainer = ClientTrainer(Fabric(accelerator="cpu", devices=1), model, TrainSettings(eval_batch_size=eval_batch_size),
                            num_classes=2)
    params = trainer.global_params()
    # Execute
    grad = trainer.gradients(params, [store.client(0, 0)])
    # Assert: softmax(0) = (0.5, 0.5), so p - onehot is (-.5, .5) and (.5, -.5):
    # dW = ((-.5, .5)^T (1, 2) + (.5, -.5)^T (3, -1)) / 2 = [[.5, -.75], [-.5, .75]], db = 0.
    assert grad.shape == (1, 6)
    np.testing.assert_allclose(grad[0], [0.5, -0.75, -0.5, 0.75, 0.0, 0.0], atol=1e-7)
    assert torch.equal(trainer.global_params()["weight"], params["weight"])  # no step taken


def test_divfl_collects_every_gradient_at_round_0_then_refreshes_the_selected() -> None:
    selector = SELECTORS.build("learning.divfl")
    loop = FakeLoop(seed=0)
    out = loop.run(selector, range(3), k=4)
    # Round 0: one probe of all 12 clients, before selecting (the chosen ones were just probed at that model).
    assert loop.grad_probed[0] == list(range(12))
    assert len(loop.grad_probed) == 3
    # Rounds 1 and 2 (k = 4 > 1): only the selected clients, at the model they now receive.
    for (_, selection), probed in zip(out[1:], loop.grad_probed[1:], strict=True):
        assert probed == selection.ids.tolist()
    # The vectors are the fakes' gradients of the round each client was last probed in.
    from tests.selection_fakes import fake_update

    last = out[2][1].ids.tolist()
    np.testing.assert_allclose(selector.updates[last[0]], fake_update(2, last[0]).numpy())
    untouched = sorted(set(range(12)) - set(out[1][1].ids.tolist()) - set(last))[0]
    np.testing.assert_allclose(selector.updates[untouched], fake_update(0, untouched).numpy())


def test_divfl_at_k_1_collects_fresh_gradients_every_round() -> None:
    loop = FakeLoop(seed=1)
    loop.run(SELECTORS.build("learning.divfl"), range(4), k=1)
    assert loop.grad_probed == [loop.available(r).tolist() for r in range(4)]  # all available, every round


def test_divfl_refresh_every_collects_all_gradients_every_r_rounds() -> None:
    loop = FakeLoop(seed=2)
    loop.available = lambda r: np.arange(12)  # type: ignore[method-assign]
    out = loop.run(SELECTORS.build("learning.divfl", {"refresh_every": 2}), range(4), k=4)
    sizes = [len(p) for p in loop.grad_probed]
    assert sizes == [12, 4, 12, 4]
    assert loop.grad_probed[1] == out[1][1].ids.tolist()


def test_divfl_picks_one_client_per_gradient_family() -> None:
    # The fakes' gradients point along e0 for even clients and e1 for odd ones (plus small noise).
    selection = FakeLoop(seed=3).run(SELECTORS.build("learning.divfl"), range(1), k=2)[0][1]
    assert sorted(int(c) % 2 for c in selection.ids) == [0, 1]


def test_divfl_signal_in_a_run_is_each_clients_gradient_at_the_global_model(tmp_path: Path) -> None:
    from csfl_fabric.build import build_run
    from csfl_fabric.config import load_config

    # Prepare: the smoke run (digits, 10 clients, logreg 64 -> 10) with DivFL, one round.
    config = load_config(SMOKE, [f"logging.dir={tmp_path}", "selector.name=learning.divfl", "rounds.num_rounds=1"])
    built = build_run(config, run_dir=tmp_path / "run")
    orch = built.orchestrator
    start = {k: v.detach().clone().numpy() for k, v in orch.global_params.items()}
    store = orch.store
    # Execute
    orch.run()
    # Assert: after round 0 every client's row is its full-batch gradient at the initial model, by hand.
    for c in range(store.num_clients):
        x, y = store.client(c, 0).arrays()
        expected = _softmax_gradient(start["1.weight"], start["1.bias"], x.reshape(len(y), -1).numpy(), y.numpy())
        np.testing.assert_allclose(orch.selector.updates[c], expected, rtol=1e-4, atol=1e-6)
    assert not orch.selector.needs_updates  # no post-training updates are collected for it

import pytest
import torch
import torch.nn.functional as F

import csfl_fabric.models  # noqa: F401  (registers the models)
from csfl_fabric.registry import MODELS

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
FLAT_MODELS = {"logreg", "mlp"}
SEQUENCE_MODELS = {"char_lstm"}  # (L,) token ids in, no images


def _input(name: str, shape: tuple[int, ...], n: int) -> torch.Tensor:
    """A batch of ``n`` inputs the model takes: token ids (small ints, as the datasets store them) or floats."""
    return torch.randint(0, 7, (n, *shape), dtype=torch.uint8) if name in SEQUENCE_MODELS else torch.randn(n, *shape)


def _valid_shape(name: str) -> tuple[int, ...]:
    return (60,) if name in FLAT_MODELS | SEQUENCE_MODELS else (1, 8, 8)


def _build(name: str, shape: tuple[int, ...], num_classes: int = 10) -> torch.nn.Module:
    return MODELS.build(name, input_shape=shape, num_classes=num_classes)


def test_expected_models_are_registered():
    assert {"logreg", "mlp", "cnn", "lenet5", "resnet18"} <= set(MODELS.names())


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [*IMAGE_SHAPES, (60,)], ids=lambda s: "x".join(map(str, s)))
def test_forward_shape(name, shape):
    takes_vectors = name in FLAT_MODELS | SEQUENCE_MODELS
    takes_images = name not in SEQUENCE_MODELS
    if not (takes_vectors if len(shape) == 1 else takes_images):
        with pytest.raises(ValueError, match="input_shape"):
            _build(name, shape)
        return
    model = _build(name, shape, num_classes=7).eval()
    with torch.no_grad():
        out = model(_input(name, shape, 3))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_weights(name):
    shape = _valid_shape(name)
    torch.manual_seed(123)
    a = _build(name, shape).state_dict()
    torch.manual_seed(123)
    b = _build(name, shape).state_dict()
    torch.manual_seed(124)
    c = _build(name, shape).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", MODELS.names())
def test_sgd_steps_reduce_loss(name):
    shape = _valid_shape(name)
    torch.manual_seed(0)
    model = _build(name, shape).train()
    x, y = _input(name, shape, 8), torch.arange(8) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_no_dropout_in_default_models():
    for name in ("logreg", "mlp", "cnn"):
        model = _build(name, (1, 8, 8))
        assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_resnet18_norm_options():
    gn = MODELS.build("resnet18", input_shape=(3, 32, 32), num_classes=10, norm="group")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gn.modules())
    bn = MODELS.build("resnet18", input_shape=(3, 32, 32), num_classes=10)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    with pytest.raises(ValueError, match="norm"):
        MODELS.build("resnet18", input_shape=(3, 32, 32), num_classes=10, norm="layer")


def test_factories_take_documented_params():
    assert "hidden" in MODELS.param_names("mlp")
    assert "norm" in MODELS.param_names("resnet18")
    assert sum(p.numel() for p in _build("mlp", (60,)).parameters()) == 60 * 200 + 200 + 200 * 200 + 200 + 2010


def test_grid_passes_a_map_of_its_size_through_and_pools_others() -> None:
    from csfl_fabric.models import Grid

    x = torch.randn(2, 3, 4, 4)
    assert Grid(4)(x) is x  # no copy, no pass: an adaptive pool to the same size is the identity
    big = torch.randn(2, 3, 8, 6)
    torch.testing.assert_close(Grid(4)(big), F.adaptive_avg_pool2d(big, 4))
    torch.testing.assert_close(Grid((4, None))(big), F.adaptive_avg_pool2d(big, (4, None)))
    torch.testing.assert_close(Grid(4)(x), F.adaptive_avg_pool2d(x, 4))  # and the identity is exact


def test_femnist_cnn_is_leafs_architecture() -> None:
    model = MODELS.build("femnist_cnn", input_shape=(1, 28, 28), num_classes=62)
    # conv5x5(32) + conv5x5(64) + fc(7*7*64 -> 2048) + fc(2048 -> 62), as in leaf/models/femnist/cnn.py.
    expected = (25 * 32 + 32) + (25 * 32 * 64 + 64) + (7 * 7 * 64 * 2048 + 2048) + (2048 * 62 + 62)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 62)


def test_char_lstm_is_leafs_shakespeare_model() -> None:
    model = MODELS.build("char_lstm", input_shape=(80,), num_classes=80)
    assert model.embed.weight.shape == (80, 8)
    assert (model.lstm.num_layers, model.lstm.hidden_size, model.lstm.input_size) == (2, 256, 8)
    assert model.fc.weight.shape == (80, 256)
    # The logits are those of the last step: changing an early character changes them, so does the order.
    x = torch.randint(0, 80, (1, 80))
    flipped = x.clone()
    flipped[0, 0] = (x[0, 0] + 1) % 80
    assert not torch.equal(model(x), model(flipped))
    with pytest.raises(ValueError, match="input_shape"):
        MODELS.build("char_lstm", input_shape=(1, 28, 28), num_classes=80)

import pytest
import torch
import torch.nn.functional as F

import csfl_fabric.models  # noqa: F401  (registers the models)
from csfl_fabric.registry import MODELS

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
FLAT_MODELS = {"logreg", "mlp"}


def _build(name: str, shape: tuple[int, ...], num_classes: int = 10) -> torch.nn.Module:
    return MODELS.build(name, input_shape=shape, num_classes=num_classes)


def test_expected_models_are_registered():
    assert {"logreg", "mlp", "cnn", "lenet5", "resnet18"} <= set(MODELS.names())


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [*IMAGE_SHAPES, (60,)], ids=lambda s: "x".join(map(str, s)))
def test_forward_shape(name, shape):
    if len(shape) == 1 and name not in FLAT_MODELS:
        with pytest.raises(ValueError, match="input_shape"):
            _build(name, shape)
        return
    model = _build(name, shape, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_weights(name):
    shape = (1, 8, 8)
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
    shape = (60,) if name in FLAT_MODELS else (1, 8, 8)
    torch.manual_seed(0)
    model = _build(name, shape).train()
    x, y = torch.randn(8, *shape), torch.arange(8) % 10
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

"""Tests for csfl_fabric.data.datasets: shapes, determinism, the Synthetic spec, offline torchvision loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from csfl_fabric.data import FederatedDataset
from csfl_fabric.errors import ConfigError, InvalidParamsError
from csfl_fabric.registry import DATASETS
from tests.dataset_fakes import write_cifar, write_mnist


def _build(name: str, seed: int = 0, num_clients: int = 10, root: str = "unused", **params: object) -> FederatedDataset:
    return DATASETS.build(
        name, params, root=root, download=False, num_clients=num_clients, rng=np.random.default_rng(seed)
    )


def _label_entropy(ds: FederatedDataset) -> float:
    """Mean entropy of the per-client label distributions: lower means more label skew."""
    assert ds.client_indices is not None
    entropies = []
    for idx in ds.client_indices:
        p = np.bincount(ds.y_train[idx].numpy(), minlength=ds.num_classes) / len(idx)
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


def test_registry_holds_every_dataset() -> None:
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS.names())


# --- digits -----------------------------------------------------------------------------------------------


def test_digits_shapes_classes_and_standardisation() -> None:
    ds = _build("digits")
    assert ds.input_shape == (1, 8, 8)
    assert ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert len(ds.y_test) == pytest.approx(0.2 * 1797, abs=10)
    assert ds.client_indices is None
    assert ds.x_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert ds.x_train.std().item() == pytest.approx(1.0, abs=1e-3)
    # Stratified: every class keeps about the same share in the test set.
    share = np.bincount(ds.y_test.numpy(), minlength=10) / np.bincount(ds.y_train.numpy(), minlength=10)
    assert np.all(np.abs(share - 0.25) < 0.02)


def test_digits_test_split_is_seeded() -> None:
    a, b, c = _build("digits", seed=1), _build("digits", seed=1), _build("digits", seed=2)
    assert torch.equal(a.x_test, b.x_test)
    assert torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)


def test_digits_rejects_bad_test_fraction() -> None:
    with pytest.raises(ConfigError, match=r"data\.params\.test_fraction"):
        _build("digits", test_fraction=1.5)


# --- synthetic --------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_client_sizes_follow_the_spec() -> None:
    ds = _build("synthetic", seed=3, num_clients=20)
    # Sizes are the first draw of the stream: floor(LogNormal(4, 2)) + 50, then a 90/10 split per client.
    sizes = np.random.default_rng(3).lognormal(4, 2, 20).astype(np.int64) + 50
    n_train = (0.9 * sizes).astype(np.int64)
    assert ds.client_indices is not None
    assert [len(ix) for ix in ds.client_indices] == n_train.tolist()
    assert len(ds.y_train) == n_train.sum()
    assert len(ds.y_test) == (sizes - n_train).sum()
    assert ds.x_train.shape == (n_train.sum(), 60)
    assert ds.x_train.dtype == torch.float32
    assert ds.input_shape == (60,)
    assert ds.num_classes == 10
    assert set(ds.y_train.unique().tolist()) <= set(range(10))
    # Client indices are the consecutive blocks of the concatenated train parts.
    assert np.array_equal(np.concatenate(ds.client_indices), np.arange(len(ds.y_train)))


def test_synthetic_is_deterministic_per_seed() -> None:
    a, b, c = (_build("synthetic", seed=s, num_clients=5) for s in (7, 7, 8))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.x_train.shape != c.x_train.shape or not torch.equal(a.x_train, c.x_train)


def test_synthetic_beta_increases_label_skew() -> None:
    # Larger input means (beta) make x W_k dominated by a per-client constant, so clients see fewer classes.
    entropies = [_label_entropy(_build("synthetic", seed=0, num_clients=100, beta=beta)) for beta in (0.0, 1.0, 5.0)]
    assert entropies[0] > entropies[1] > entropies[2]


def test_synthetic_alpha_does_not_change_labels() -> None:
    # u_k is the mean of every entry of W_k and b_k, so it adds u_k * (sum(x) + 1) to every logit alike and
    # cancels in the argmax. With the same stream, alpha changes the hidden models but not the data.
    a = _build("synthetic", seed=4, num_clients=10, alpha=0.0)
    b = _build("synthetic", seed=4, num_clients=10, alpha=2.0)
    assert torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.y_train, b.y_train)


def test_synthetic_iid_variant_has_no_label_skew() -> None:
    iid = _build("synthetic", seed=0, num_clients=30, iid=True)
    niid = _build("synthetic", seed=0, num_clients=30)
    assert _label_entropy(iid) > _label_entropy(niid) + 0.5
    # Every client draws x around 0 with the same W, b, so client input means agree up to sampling noise.
    assert iid.client_indices is not None
    means = torch.stack([iid.x_train[ix].mean(0) for ix in iid.client_indices])
    assert means[:, 0].abs().max() < 0.6


def test_synthetic_params_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"data\.params\.beta"):
        _build("synthetic", beta=-1.0)
    with pytest.raises(InvalidParamsError, match="Valid params"):
        _build("synthetic", gamma=1.0)


# --- torchvision datasets, from tiny files in torchvision's on-disk format -----------------------------------


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_loads_offline(tmp_path: Path, name: str, folder: str) -> None:
    write_mnist(tmp_path, folder)
    ds = _build(name, root=str(tmp_path))
    assert ds.x_train.shape == (30, 1, 28, 28)
    assert ds.x_test.shape == (10, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    assert ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32
    assert ds.y_train.tolist() == [i % 10 for i in range(30)]
    assert ds.x_train.mean().item() == pytest.approx(0.0, abs=1e-4)


def test_cifar10_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path, monkeypatch)
    ds = _build("cifar10", root=str(tmp_path))
    assert ds.x_train.shape == (20, 3, 32, 32)
    assert ds.x_test.shape == (4, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32)
    assert ds.num_classes == 10
    # Standardised per channel with the train statistics.
    assert torch.allclose(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                              ("cifar10", "cifar-10-batches-py")])  # fmt: skip
def test_missing_files_without_download_is_a_config_error(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.root=.*data\.download=true") as info:
        _build(name, root=str(tmp_path / "nowhere"))
    assert folder in str(info.value)
    assert "\n" not in str(info.value)

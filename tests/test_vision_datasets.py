"""kmnist, emnist, cifar100 and stl10: torchvision's real loaders on tiny files in each real on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from csfl_fabric.api import run
from csfl_fabric.data import FederatedDataset
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import DATASETS
from tests.conftest import SMOKE
from tests.dataset_fakes import write_cifar, write_mnist, write_stl10


def _build(name: str, root: Path, **params: object) -> FederatedDataset:
    return DATASETS.build(name, params, root=str(root), download=False, num_clients=4, rng=np.random.default_rng(0))


def _write(name: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "kmnist":
        write_mnist(root, "KMNIST")
    elif name == "emnist":
        write_mnist(root, "EMNIST", prefixes=("emnist-balanced-train", "emnist-balanced-test"), num_classes=47)
    elif name == "cifar100":
        write_cifar(root, monkeypatch, per_batch=20, cls_name="CIFAR100")
    else:
        write_stl10(root, monkeypatch, n_train=20, n_test=4)


# name, train inputs, test samples, classes
EXPECTED = {"kmnist": ((30, 1, 28, 28), 10, 10), "emnist": ((30, 1, 28, 28), 10, 47),
            "cifar100": ((20, 3, 32, 32), 20, 100), "stl10": ((20, 3, 96, 96), 4, 10)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_the_real_format_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _write(name, tmp_path, monkeypatch)
    ds = _build(name, tmp_path)
    shape, n_test, classes = EXPECTED[name]
    assert tuple(ds.x_train.shape) == shape
    assert ds.input_shape == shape[1:]
    assert len(ds.y_test) == n_test
    assert ds.num_classes == classes
    # The labels written: i % classes (STL-10 stores 1-10 and torchvision makes them 0-9).
    written = 10 if name == "stl10" else 47 if name == "emnist" else classes
    assert ds.y_train.tolist() == [i % written for i in range(shape[0])]
    assert ds.x_train.dtype == torch.float32
    assert torch.allclose(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(shape[1]), atol=1e-4)  # train statistics


def test_stl10_images_are_channels_first_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_stl10(tmp_path, monkeypatch, n_train=20, n_test=4)
    raw = np.fromfile(tmp_path / "stl10_binary" / "train_X.bin", dtype=np.uint8).reshape(20, 3, 96, 96)
    ds = _build("stl10", tmp_path)
    # STL-10 stores each channel column-major: torchvision transposes H and W; we keep its N x C x H x W.
    pixels = torch.from_numpy(raw.transpose(0, 1, 3, 2).astype(np.float32) / 255)
    expected = (pixels - pixels.mean(dim=(0, 2, 3), keepdim=True)) / pixels.std(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(ds.x_train, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "folder"), [("kmnist", "KMNIST/raw"), ("emnist", "EMNIST/raw/emnist-balanced"),
                                              ("cifar100", "cifar-100-python"), ("stl10", "stl10_binary")])  # fmt: skip
def test_missing_files_name_the_folder(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.download=true") as info:
        _build(name, tmp_path / "nowhere")
    assert folder in str(info.value)
    assert "\n" not in str(info.value)


def test_emnist_split_is_a_param_and_a_typo_lists_the_splits(tmp_path: Path) -> None:
    write_mnist(tmp_path, "EMNIST", prefixes=("emnist-letters-train", "emnist-letters-test"), num_classes=27)
    assert _build("emnist", tmp_path, split="letters").num_classes == 27  # torchvision's N/A plus a-z
    with pytest.raises(ConfigError, match=r"data\.params\.split='leters'.*letters"):
        _build("emnist", tmp_path, split="leters")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trains_two_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke: list[str], name: str) -> None:
    _write(name, tmp_path / "data", monkeypatch)
    result = run(SMOKE, [*smoke, f"data.dataset={name}", f"data.root={tmp_path / 'data'}", "data.num_clients=4",
                         "data.partition.name=iid", "train.model=cnn", "rounds.num_rounds=2",
                         "rounds.clients_per_round=2"])
    assert len(result.metrics) == 2
    assert all(0.0 <= float(m["eval/acc"]) <= 1.0 for m in result.metrics)
    assert result.params["fc2.weight"].shape[0] == EXPECTED[name][2]

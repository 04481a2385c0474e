"""data.dataset=hf: local Hugging Face datasets written with save_to_disk (and a folder of data files)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from csfl_fabric.api import run
from csfl_fabric.data import FederatedDataset
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import DATASETS
from tests.conftest import SMOKE

datasets = pytest.importorskip("datasets")  # the [hf] extra; the [test] extra installs it
datasets.disable_progress_bars()


def _build(download: bool = False, **params: object) -> FederatedDataset:
    return DATASETS.build("hf", params, root="unused", download=download, num_clients=0, rng=np.random.default_rng(0))


def _vectors(n: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(n, 5)).tolist(), "digit": [i % 3 for i in range(n)],
            "writer": [f"w{(i * 7) % 4}" for i in range(n)]}


def _save_dict(path: Path) -> None:
    features = datasets.Features({"features": datasets.Sequence(datasets.Value("float32")),
                                  "digit": datasets.ClassLabel(num_classes=4), "writer": datasets.Value("string")})
    splits = {s: datasets.Dataset.from_dict(_vectors(n, seed), features=features)
              for s, n, seed in (("train", 12, 0), ("test", 5, 1))}
    datasets.DatasetDict(splits).save_to_disk(str(path))


def test_save_to_disk_dict_with_clients(tmp_path: Path) -> None:
    _save_dict(tmp_path / "ds")
    ds = _build(path=str(tmp_path / "ds"), input_column="features", label_column="digit", client_column="writer")
    data = _vectors(12)
    assert ds.input_shape == (5,)
    assert ds.num_classes == 4  # from the ClassLabel, not from the labels seen (0-2)
    torch.testing.assert_close(ds.x_train, torch.tensor(data["features"], dtype=torch.float32))
    assert ds.y_train.tolist() == data["digit"]
    assert len(ds.y_test) == 5
    # One client per distinct writer, in sorted id order, each holding exactly that writer's rows.
    writers = np.array(data["writer"])
    assert ds.client_indices is not None
    assert [ix.tolist() for ix in ds.client_indices] == [np.flatnonzero(writers == w).tolist()
                                                          for w in ("w0", "w1", "w2", "w3")]


def test_images_without_a_test_split_are_standardised_and_stratified(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    features = datasets.Features({"img": datasets.Array3D((6, 6, 3), "uint8"), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"img": pixels, "label": [i % 2 for i in range(20)]}, features=features).save_to_disk(
        str(tmp_path / "img"))
    ds = _build(path=str(tmp_path / "img"), input_column="img", test_fraction=0.2)
    assert ds.input_shape == (3, 6, 6)  # NHWC on disk, NCHW here
    assert (len(ds.y_train), len(ds.y_test)) == (16, 4)
    assert np.bincount(ds.y_test.numpy()).tolist() == [2, 2]  # stratified
    assert torch.allclose(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert ds.client_indices is None


def test_a_folder_of_data_files_loads_through_load_dataset(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    datasets.Dataset.from_dict(_vectors(10)).to_parquet(str(tmp_path / "files" / "train.parquet"))
    ds = _build(path=str(tmp_path / "files"), input_column="features", label_column="digit",
                cache_dir=str(tmp_path / "cache"), test_fraction=0.3)
    assert ds.input_shape == (5,)
    assert len(ds.y_train) + len(ds.y_test) == 10
    assert ds.num_classes == 3


def test_bad_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_dict(tmp_path / "ds")
    with pytest.raises(ConfigError, match=r"data\.params\.label_column='label'.*features, digit, writer"):
        _build(path=str(tmp_path / "ds"), input_column="features")
    with pytest.raises(ConfigError, match=r"input_column=writer.*not numeric"):
        _build(path=str(tmp_path / "ds"), input_column="writer", label_column="digit")
    with pytest.raises(ConfigError, match=r"data\.params\.path=.*save_to_disk"):
        _build(path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"data\.download=true.*save_to_disk"):
        _build(download=True, path=str(tmp_path / "ds"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r'needs the `datasets` package: pip install "csfl_fabric\[hf\]"'):
        _build(path=str(tmp_path / "ds"))


def test_trains_two_rounds_on_its_clients(tmp_path: Path, smoke: list[str]) -> None:
    _save_dict(tmp_path / "ds")
    result = run(SMOKE, [*smoke, "data.dataset=hf", f"data.params.path={tmp_path / 'ds'}",
                         "data.params.input_column=features", "data.params.label_column=digit",
                         "data.params.client_column=writer", "data.num_clients=4", "data.partition.name=natural",
                         "train.model=logreg", "rounds.num_rounds=2", "rounds.clients_per_round=2"])
    assert len(result.metrics) == 2
    assert result.params["1.weight"].shape == (4, 5)

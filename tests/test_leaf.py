"""LEAF's femnist and shakespeare: tiny files in LEAF's own JSON layout, read by the real loader and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from csfl_fabric.api import run
from csfl_fabric.data import FederatedDataset
from csfl_fabric.data.leaf import SHAKESPEARE_VOCAB
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import DATASETS
from tests.conftest import SMOKE

User = tuple[list, list, list, list]  # train x, train y, test x, test y


def write_leaf(root: Path, users: dict[str, User], per_file: int = 2) -> None:
    """LEAF's layout: train/ and test/ JSON of ``per_file`` users each, plus an empty entry LEAF leaves behind."""
    names = list(users)
    for split, (xi, yi) in (("train", (0, 1)), ("test", (2, 3))):
        (root / split).mkdir(parents=True)
        for f, start in enumerate(range(0, len(names), per_file)):
            chunk = names[start : start + per_file]
            data = {u: {"x": users[u][xi], "y": users[u][yi]} for u in chunk}
            data["dropped_by_leaf"] = {"x": [], "y": []}  # split_data.py keeps entries of users it drops
            content = {"users": chunk, "num_samples": [len(users[u][yi]) for u in chunk], "user_data": data}
            (root / split / f"all_data_{f}_niid_05_keep_0_{split}_9.json").write_text(json.dumps(content))


def _images(rng: np.random.Generator, n: int) -> list[list[float]]:
    return (rng.integers(0, 256, (n, 784)) / 255).tolist()  # LEAF's pixels: k / 255


def femnist_users(sizes: tuple[int, ...] = (6, 3, 9, 1, 5)) -> dict[str, User]:
    rng = np.random.default_rng(0)
    return {f"f{k:04d}_{k}": (_images(rng, n), [(k + i) % 62 for i in range(n)], _images(rng, 2), [k, 61])
            for k, n in enumerate(sizes)}


TEXT = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer\nThe slings! "


def shakespeare_users(sizes: tuple[int, ...] = (4, 7, 2)) -> dict[str, User]:
    def samples(start: int, n: int) -> tuple[list[str], list[str]]:
        return [TEXT[start + i : start + i + 80] for i in range(n)], [TEXT[start + i + 80] for i in range(n)]

    return {f"HAMLET_{k}": (*samples(k, n), *samples(k + 1, 1)) for k, n in enumerate(sizes)}


def _build(name: str, root: Path, seed: int = 0, download: bool = False, **params: object) -> FederatedDataset:
    return DATASETS.build(name, params, root=str(root), download=download, num_clients=0,
                          rng=np.random.default_rng(seed))


def test_femnist_writers_are_natural_clients_over_one_tensor(tmp_path: Path) -> None:
    users = femnist_users()
    write_leaf(tmp_path, users)
    ds = _build("femnist", tmp_path)
    assert ds.input_shape == (1, 28, 28)
    assert ds.num_classes == 62
    assert ds.x_train.shape == (24, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32
    assert ds.client_indices is not None
    assert [len(ix) for ix in ds.client_indices] == [6, 3, 9, 1, 5]  # one client per writer, in file order
    for ix, (x, y, _, _) in zip(ds.client_indices, users.values(), strict=True):
        # Each client's indices hold that writer's samples, pixels exactly as LEAF wrote them (not standardised).
        torch.testing.assert_close(ds.x_train[ix].reshape(len(y), 784), torch.tensor(x, dtype=torch.float32))
        assert ds.y_train[ix].tolist() == y
    assert ds.x_train.untyped_storage().nbytes() == 24 * 784 * 4  # held once: clients are only index arrays


def test_femnist_test_split_per_client_or_central(tmp_path: Path) -> None:
    write_leaf(tmp_path, femnist_users())
    own = _build("femnist", tmp_path, min_samples=4)  # keeps writers 0, 2, 4
    assert own.client_test_indices is not None
    assert own.y_test.tolist() == [0, 61, 2, 61, 4, 61]  # the kept writers' own LEAF test samples
    assert [own.y_test[ix].tolist() for ix in own.client_test_indices] == [[0, 61], [2, 61], [4, 61]]
    central = _build("femnist", tmp_path, min_samples=4, test_split="central")
    assert central.y_test.tolist() == [0, 61, 1, 61, 2, 61, 3, 61, 4, 61]  # every writer's, kept or not
    assert central.client_test_indices is None
    with pytest.raises(ConfigError, match=r"data\.params\.test_split='server'.*client, central"):
        _build("femnist", tmp_path, test_split="server")


def test_min_samples_and_fraction_select_writers(tmp_path: Path) -> None:
    write_leaf(tmp_path, femnist_users())
    assert [len(ix) for ix in _build("femnist", tmp_path, min_samples=5).client_indices] == [6, 9, 5]
    a, b = (_build("femnist", tmp_path, seed=3, fraction=0.6) for _ in range(2))
    assert len(a.client_indices) == 3  # round(0.6 * 5)
    assert torch.equal(a.y_train, b.y_train)  # seeded
    picks = {tuple(_build("femnist", tmp_path, seed=s, fraction=0.6).y_train.tolist()) for s in range(8)}
    assert len(picks) > 1  # and drawn, not the first three
    with pytest.raises(ConfigError, match=r"min_samples=100"):
        _build("femnist", tmp_path, min_samples=100)


def test_missing_root_names_the_layout_and_leafs_command(tmp_path: Path) -> None:
    for download, start in ((False, "Dataset `femnist` not found"), (True, "`data.download=true` cannot fetch")):
        with pytest.raises(ConfigError) as info:
            _build("femnist", tmp_path / "nowhere", download=download)
        message = str(info.value)
        assert message.startswith(start)
        assert "train/*.json" in message
        assert "test/*.json" in message
        assert "./preprocess.sh -s niid --sf 0.05 -k 100 -t sample" in message
        assert "\n" not in message


def test_leaf_folder_of_the_leaf_repo_is_found(tmp_path: Path) -> None:
    write_leaf(tmp_path / "femnist" / "data", femnist_users())  # root = leaf/data, as LEAF's repo lays it out
    assert len(_build("femnist", tmp_path).client_indices) == 5


def test_shakespeare_encodes_leafs_vocabulary(tmp_path: Path) -> None:
    users = shakespeare_users()
    write_leaf(tmp_path, users)
    ds = _build("shakespeare", tmp_path)
    assert len(SHAKESPEARE_VOCAB) == 80
    assert ds.num_classes == 80
    assert ds.input_shape == (80,)
    assert ds.x_train.dtype == torch.uint8  # 80 bytes a sample
    assert [len(ix) for ix in ds.client_indices] == [4, 7, 2]
    x, y, _, _ = users["HAMLET_1"]
    rows = ds.client_indices[1]
    assert ["".join(SHAKESPEARE_VOCAB[i] for i in row) for row in ds.x_train[rows].tolist()] == x
    assert [SHAKESPEARE_VOCAB[i] for i in ds.y_train[rows].tolist()] == y  # the next character
    assert len(ds.y_test) == 3


def test_shakespeare_rejects_a_character_outside_the_vocabulary(tmp_path: Path) -> None:
    write_leaf(tmp_path, {"ROMEO": (["é" * 80], ["a"], ["a" * 80], ["b"])})
    with pytest.raises(ConfigError, match="'é' is not in LEAF's 80-character"):
        _build("shakespeare", tmp_path)


@pytest.mark.parametrize(("name", "model", "users"), [("femnist", "femnist_cnn", femnist_users()),
                                                      ("shakespeare", "char_lstm", shakespeare_users())])
def test_trains_two_rounds(tmp_path: Path, smoke: list[str], name: str, model: str, users: dict[str, User]) -> None:
    write_leaf(tmp_path / "leaf", users)
    result = run(SMOKE, [*smoke, f"data.dataset={name}", f"data.root={tmp_path / 'leaf'}",
                         f"data.num_clients={len(users)}", "data.partition.name=natural", f"train.model={model}",
                         "rounds.num_rounds=2", "rounds.clients_per_round=2", "train.batch_size=4"])
    assert len(result.metrics) == 2
    assert all(0.0 <= float(m["eval/acc"]) <= 1.0 and np.isfinite(float(m["eval/loss"])) for m in result.metrics)
    head, classes = ("fc2.weight", 62) if name == "femnist" else ("fc.weight", 80)
    assert result.params[head].shape[0] == classes


def test_cohort_backend_refuses_the_lstm_at_build_time(tmp_path: Path, smoke: list[str]) -> None:
    write_leaf(tmp_path / "leaf", shakespeare_users())
    with pytest.raises(ConfigError, match=r"`lstm` \(LSTM\) is not supported by `train.backend=cohort`.*sequential"):
        run(SMOKE, [*smoke, "data.dataset=shakespeare", f"data.root={tmp_path / 'leaf'}", "data.num_clients=3",
                    "data.partition.name=natural", "train.model=char_lstm", "train.backend=cohort",
                    "rounds.clients_per_round=2"])
    assert not list((tmp_path / "runs").glob("**/metrics.csv"))  # refused before round 1

"""Tiny files in torchvision's real on-disk formats, so the real torchvision loading code runs offline in tests."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the big-endian IDX format of the MNIST files (magic 0x08 = ubyte, then ndim)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 30, n_test: int = 10,
                prefixes: tuple[str, str] = ("train", "t10k"), num_classes: int = 10) -> None:
    """MNIST-style ``{folder}/raw/{prefix}-images-idx3-ubyte``, labels ``i % num_classes`` (EMNIST: other prefixes)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in zip(prefixes, (n_train, n_test), strict=True):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % num_classes)


#: Per torchvision class: folder, train files, test files, label key, meta file and its class-names key, classes.
CIFAR_LAYOUTS = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "batches.meta", "label_names", 10),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names", 100),
}


def write_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 4, cls_name: str = "CIFAR10") -> None:
    """CIFAR-10 or CIFAR-100 pickles of ``per_batch`` images per file, labels ``i % classes``."""
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    folder_name, train_files, test_files, label_key, meta_file, names_key, classes = CIFAR_LAYOUTS[cls_name]
    folder = root / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, entry: dict[str, object]) -> list[str]:
        path = folder / name
        path.write_bytes(pickle.dumps(entry))
        return [name, md5(path)]

    def batch(name: str) -> list[str]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        return dump(name, {"data": data, label_key: [i % classes for i in range(per_batch)]})

    train = [batch(name) for name in train_files]
    test = [batch(name) for name in test_files]
    meta = dump(meta_file, {names_key: [f"class{i}" for i in range(classes)]})
    # torchvision checks each file's md5 against class attributes that hold the real files' sums. Point those at
    # our tiny files' sums: torchvision's own integrity check still runs, on the files we wrote.
    monkeypatch.setattr(cls, "train_list", train)
    monkeypatch.setattr(cls, "test_list", test)
    monkeypatch.setattr(cls, "meta", {"filename": meta[0], "key": names_key, "md5": meta[1]})


def write_stl10(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 6, n_test: int = 4) -> None:
    """STL-10's binary files: uint8 images N x 3 x 96 x 96 (column-major per channel), labels 1-10, class names."""
    from torchvision.datasets import STL10

    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sums = {}
    for name, n in (("train", n_train), ("test", n_test), ("unlabeled", 1)):
        (folder / f"{name}_X.bin").write_bytes(rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tobytes())
        sums[f"{name}_X.bin"] = md5(folder / f"{name}_X.bin")
        if name != "unlabeled":
            (folder / f"{name}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())
            sums[f"{name}_y.bin"] = md5(folder / f"{name}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    monkeypatch.setattr(STL10, "train_list", [[f, sums[f]] for f in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")])
    monkeypatch.setattr(STL10, "test_list", [[f, sums[f]] for f in ("test_X.bin", "test_y.bin")])

"""Datasets as in-memory tensors, registered in `DATASETS` (``digits``, ``synthetic``, ``mnist``, ...).

Every factory has the signature ``(*, root, download, num_clients, rng, **params) -> FederatedDataset``.
``params`` are the dataset's own keyword-only arguments (no ``**kwargs``, so the registry can reject typos).
The whole dataset is converted to tensors once; clients are index arrays into it (see `ClientStore`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from csfl_fabric.data.indices import ClientIndices
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import DATASETS


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors elementwise in __eq__ would be ambiguous
class FederatedDataset:
    """A train set, a held-out central test set and, for datasets that come with clients, their split.

    Attributes:
        x_train: float32 inputs, ``N x C x H x W`` for images or ``N x D`` for vectors (or integer token ids
            ``N x L`` for sequence models, e.g. Shakespeare's uint8 characters).
        y_train: int64 labels in ``[0, num_classes)``.
        x_test: central test inputs, same trailing shape as ``x_train``.
        y_test: central test labels.
        num_classes: number of classes.
        input_shape: shape of one input, e.g. ``(1, 8, 8)`` or ``(60,)``.
        client_indices: natural per-client index arrays into ``x_train`` (``None`` if the dataset has none); a
            `ClientIndices` for many clients (one array, no Python object per client).
        client_test_indices: each natural client's own test samples, index arrays into ``x_test`` (LEAF's
            per-client split; ``None`` if the test set is not split by client).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    client_indices: Sequence[np.ndarray] | None = None
    client_test_indices: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        # Catch a malformed dataset here rather than as a shape error deep inside training.
        for name, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.shape[0] != y.shape[0] or tuple(x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(
                    f"Expected `x_{name}` of shape (N, *{tuple(self.input_shape)}) and `y_{name}` of shape (N,) "
                    f"but got {tuple(x.shape)} and {tuple(y.shape)}."
                )
            if y.dtype != torch.int64:
                raise TypeError(f"Expected `y_{name}` to be int64 but got {y.dtype}.")


def _check(key: str, value: Any, ok: bool, fix: str) -> None:
    """Raise a `ConfigError` naming ``data.params.<key>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"Invalid `data.params.{key}={value!r}`: {fix}.")


def _standardise(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """Standardise both splits per channel with the train split's mean and std (no test leakage)."""
    dims = [d for d in range(x_train.dim()) if d != 1]  # every dim except channels
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return ((x_train - mean) / std).contiguous(), ((x_test - mean) / std).contiguous()


def _stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with ``round(test_fraction * n_c)`` test samples from each class c."""
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test.append(rng.permutation(idx)[: round(test_fraction * len(idx))])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(y), dtype=np.int64), test_idx)
    return train_idx, test_idx


@DATASETS.register("digits")
def digits(
    *, root: str, download: bool, num_clients: int, rng: np.random.Generator, test_fraction: float = 0.2
) -> FederatedDataset:
    """Scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); bundled, so it works offline.

    Pixels are scaled to [0, 1] and standardised with the train split's mean and std. The central test
    set is a stratified ``test_fraction`` of the images, drawn with ``rng``.

    Args:
        root: unused (the data ships with scikit-learn).
        download: unused.
        num_clients: unused (the dataset has no natural clients).
        rng: draws the test split.
        test_fraction: share of each class held out as the central test set, in (0, 1).

    Returns:
        The dataset with inputs of shape ``(1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    _check("test_fraction", test_fraction, 0.0 < test_fraction < 1.0, "choose a fraction in (0, 1), e.g. 0.2")
    bunch = load_digits()
    x = torch.as_tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = _stratified_split(y, test_fraction, rng)
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    x_train, x_test = _standardise(x[tr], x[te])
    y_t = torch.from_numpy(y)
    return FederatedDataset(x_train, y_t[tr], x_test, y_t[te], 10, (1, 8, 8))


@DATASETS.register("synthetic")
def synthetic(
    *,
    root: str,
    download: bool,
    num_clients: int,
    rng: np.random.Generator,
    alpha: float = 1.0,
    beta: float = 1.0,
    iid: bool = False,
    dim: int = 60,
    num_classes: int = 10,
) -> FederatedDataset:
    """FedProx's Synthetic(alpha, beta) with one client per generated device.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
    https://arxiv.org/abs/1812.06127 (generator in ``litian96/FedProx : data/synthetic_*``). All draws
    come from ``rng`` in the reference order: sizes ``n_k = floor(LogNormal(4, 2)) + 50``;
    ``u_k ~ N(0, alpha)``; ``B_k ~ N(0, beta)``; ``v_k ~ N(B_k, 1)^dim``; then per client
    ``W_k ~ N(u_k, 1)^{dim x C}``, ``b_k ~ N(u_k, 1)^C``, ``x ~ N(v_k, diag(j^-1.2))``,
    ``y = argmax(x W_k + b_k)``; then per client a shuffle and a 90/10 train/test split (the second
    standard deviation argument is a std, as in numpy). ``iid=True`` draws one shared ``W, b ~ N(0, 1)``
    and every ``x ~ N(0, diag(j^-1.2))``.

    Note that, because ``u_k`` shifts every logit by the same amount, ``alpha`` does not change the labels
    for a fixed seed; only ``beta`` (through the input means) changes the label skew.

    Args:
        root: unused (generated).
        download: unused.
        num_clients: number of devices K.
        rng: the one generator every draw comes from.
        alpha: std of the per-client model mean ``u_k`` (>= 0).
        beta: std of the per-client input mean ``B_k`` (>= 0).
        iid: draw the IID variant instead.
        dim: input dimension (60 in the paper).
        num_classes: number of classes (10 in the paper).

    Returns:
        Train parts of all clients concatenated, with ``client_indices`` into them; the central test set is
        the concatenation of the clients' 10 % test parts.
    """
    _check("alpha", alpha, alpha >= 0, "use a standard deviation >= 0 (the paper uses 0, 0.5 or 1)")
    _check("beta", beta, beta >= 0, "use a standard deviation >= 0 (the paper uses 0, 0.5 or 1)")
    _check("dim", dim, dim >= 1, "use a positive input dimension (the paper uses 60)")
    _check("num_classes", num_classes, num_classes >= 2, "use at least 2 classes (the paper uses 10)")
    if num_clients < 1:
        raise ConfigError(f"Invalid `data.num_clients={num_clients!r}`: use at least 1 client.")
    k_all = num_clients
    sizes = rng.lognormal(4, 2, k_all).astype(np.int64) + 50
    sigma = np.diag(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    if iid:
        w_all = [rng.normal(0, 1, (dim, num_classes))] * k_all
        b_all = [rng.normal(0, 1, num_classes)] * k_all
        means = np.zeros((k_all, dim))
    else:
        u = rng.normal(0, alpha, k_all)
        big_b = rng.normal(0, beta, k_all)
        means = np.stack([rng.normal(big_b[k], 1, dim) for k in range(k_all)])
    xs, ys = [], []
    for k in range(k_all):
        if not iid:
            # W_k before b_k before x_k, client by client: the reference's draw order.
            w, b = rng.normal(u[k], 1, (dim, num_classes)), rng.normal(u[k], 1, num_classes)
        else:
            w, b = w_all[k], b_all[k]
        # Cholesky is exact for a diagonal sigma and far faster than numpy's default SVD.
        xs.append(rng.multivariate_normal(means[k], sigma, sizes[k], method="cholesky"))
        ys.append(np.argmax(xs[-1] @ w + b, axis=1))
    return _split_clients(xs, ys, rng, num_classes)


def _split_clients(
    xs: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator, num_classes: int
) -> FederatedDataset:
    """Shuffle each client's samples (after all are generated, as the reference does) and split them 90/10."""
    parts: list[list[np.ndarray]] = [[], [], [], []]  # x_train, y_train, x_test, y_test
    for x, y in zip(xs, ys, strict=True):
        perm = rng.permutation(len(y))
        train, test = perm[: int(0.9 * len(y))], perm[int(0.9 * len(y)) :]
        for part, arr in zip(parts, (x[train], y[train], x[test], y[test]), strict=True):
            part.append(arr)
    offsets = np.cumsum([0] + [len(y) for y in parts[1]])
    client_indices = ClientIndices(np.arange(offsets[-1], dtype=np.int64), offsets)
    x_train, y_train, x_test, y_test = (
        torch.as_tensor(np.concatenate(p), dtype=torch.float32 if i % 2 == 0 else torch.int64)
        for i, p in enumerate(parts)
    )
    return FederatedDataset(x_train, y_train, x_test, y_test, num_classes, (xs[0].shape[1],), client_indices)


#: How torchvision's classes name the train and the test split: ``train=True/False`` for most of them.
TRAIN_TEST: tuple[dict[str, Any], dict[str, Any]] = ({"train": True}, {"train": False})


def _load_torchvision(
    name: str,
    cls_name: str,
    folder: str,
    root: str,
    download: bool,
    splits_as: tuple[dict[str, Any], ...] = TRAIN_TEST,
    **kwargs: Any,
) -> FederatedDataset:
    """Load a torchvision dataset's train and test splits into standardised NCHW float32 tensors.

    ``splits_as`` holds the constructor arguments of the train and the test split (STL-10 takes ``split="train"``);
    ``kwargs`` go to both (EMNIST's ``split``).
    """
    from csfl_fabric.extras import require

    require("vision", f"Dataset `{name}`")  # one line naming the extra, not a ModuleNotFoundError
    from torchvision import datasets as tvd

    cls = getattr(tvd, cls_name)
    root = os.path.expanduser(root)
    try:
        splits = [cls(root, download=download, **which, **kwargs) for which in splits_as]
    except (RuntimeError, OSError) as err:  # OSError: a failed download (URLError) or an unreadable root
        if download or not isinstance(err, RuntimeError):
            reason = " ".join(str(err).split())  # torchvision's messages span lines; ours is one line
            raise ConfigError(
                f"Could not load or download dataset `{name}` into `data.root={root}` ({reason}): check the "
                f"network and permissions, or fetch it elsewhere and point `data.root` at a folder holding {folder}."
            ) from err
        raise ConfigError(
            f"Dataset `{name}` not found (or corrupted) under `data.root={root}`: set `data.download=true` or "
            f"point `data.root` at a folder holding {folder}."
        ) from err
    xs, ys = [], []
    for split in splits:
        data = torch.as_tensor(np.asarray(split.data))
        # MNIST-style data is N x H x W; CIFAR's is N x H x W x C; STL-10's is already N x C x H x W.
        channels_first = data.dim() == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3)
        x = data.unsqueeze(1) if data.dim() == 3 else data if channels_first else data.permute(0, 3, 1, 2)
        xs.append(x.to(torch.float32) / 255.0)
        labels = split.targets if hasattr(split, "targets") else split.labels  # STL-10 calls them labels
        ys.append(torch.as_tensor(np.asarray(labels), dtype=torch.int64))
    x_train, x_test = _standardise(xs[0], xs[1])
    # STL-10 names its classes only when its class_names.txt is there.
    num_classes = len(getattr(splits[0], "classes", ())) or int(ys[0].max()) + 1
    return FederatedDataset(x_train, ys[0], x_test, ys[1], num_classes, tuple(x_train.shape[1:]))


@DATASETS.register("mnist")
def mnist(*, root: str, download: bool, num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    """MNIST handwritten digits (LeCun et al. 1998) via torchvision: 60k/10k images of shape ``(1, 28, 28)``.

    Files are read from ``{root}/MNIST/raw`` (fetched first if ``download``); standardised with train statistics.
    """
    return _load_torchvision("mnist", "MNIST", "MNIST/raw", root, download)


@DATASETS.register("fashion_mnist")
def fashion_mnist(*, root: str, download: bool, num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    """Fashion-MNIST (Xiao et al. 2017) via torchvision: 60k/10k images of shape ``(1, 28, 28)``.

    Files are read from ``{root}/FashionMNIST/raw`` (fetched if ``download``); standardised with train statistics.
    """
    return _load_torchvision("fashion_mnist", "FashionMNIST", "FashionMNIST/raw", root, download)


@DATASETS.register("cifar10")
def cifar10(*, root: str, download: bool, num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    """CIFAR-10 (Krizhevsky 2009) via torchvision: 50k/10k images of shape ``(3, 32, 32)``.

    Read from ``{root}/cifar-10-batches-py`` (fetched if ``download``); standardised per channel with train statistics.
    """
    return _load_torchvision("cifar10", "CIFAR10", "cifar-10-batches-py", root, download)

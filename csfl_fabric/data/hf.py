"""Local Hugging Face datasets (``data.dataset=hf``): a ``save_to_disk`` folder, a folder of data files, or the cache.

Needs the optional extra ``pip install "csfl_fabric[hf]"`` (the ``datasets`` package), imported only when this
dataset is built. Nothing is downloaded: the data must already be on this machine, which opens the Hub's
federated datasets (e.g. ones with a writer or user column) to users who fetched them elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from csfl_fabric.data.datasets import FederatedDataset, _check, _standardise, _stratified_split
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import DATASETS


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:  # one line instead of a traceback: the extra is simply not installed
        raise ConfigError('`data.dataset=hf` needs the `datasets` package: pip install "csfl_fabric[hf]".') from err
    return datasets


def _load(path: str, train_split: str, test_split: str, cache_dir: str | None) -> tuple[Any, Any | None]:
    """The train and (if there is one) test split at ``path``, without network access."""
    hf = _datasets()
    local = os.path.expanduser(path)
    saved = any(os.path.isfile(os.path.join(local, f)) for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:  # written by Dataset(Dict).save_to_disk
            loaded = hf.load_from_disk(local)
        else:  # a folder of csv/json/parquet files, or a dataset name already in the local cache
            loaded = hf.load_dataset(local if os.path.isdir(local) else path, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        reason = " ".join(str(err).split())
        raise ConfigError(
            f"Could not load a local Hugging Face dataset from `data.params.path={path}` ({reason}): use a folder "
            "written by `save_to_disk`, a folder of data files, or a dataset in the local cache."
        ) from err
    if not isinstance(loaded, hf.DatasetDict):
        return loaded, None
    _check("train_split", train_split, train_split in loaded, f"choose one of {', '.join(loaded)}")
    return loaded[train_split], loaded.get(test_split)


def _inputs(column: Any, name: str, image: bool) -> Tensor:
    """A column as a tensor: images as floats in [0, 1] (NCHW), numbers as they are."""
    array = np.asarray(column)
    if array.dtype == object or array.dtype.kind in "USO":
        raise ConfigError(f"Invalid `data.params.input_column={name}`: its rows are not numeric arrays of one shape "
                          "(text must be tokenised and images of one size); preprocess it with `datasets.map`.")
    if (image or array.dtype == np.uint8) and array.ndim in (3, 4):  # images: N x H x W or N x H x W x C
        x = torch.from_numpy(array).unsqueeze(1) if array.ndim == 3 else torch.from_numpy(array).permute(0, 3, 1, 2)
        return x.to(torch.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(torch.float32) if tensor.is_floating_point() else tensor.to(torch.int64)


@DATASETS.register("hf")
def hf(
    *,
    root: str,
    download: bool,
    num_clients: int,
    rng: np.random.Generator,
    path: str = "",
    input_column: str = "x",
    label_column: str = "label",
    client_column: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    test_fraction: float = 0.2,
    cache_dir: str | None = None,
) -> FederatedDataset:
    """A local Hugging Face dataset: one input column, one integer (or ``ClassLabel``) label column.

    Inputs: images (``Image`` features or uint8 ``Array2D``/``Array3D``, ``H x W [x C]``) become NCHW floats in
    [0, 1] standardised
    per channel with train statistics; float columns stay as they are; integer columns (token ids) stay integers.

    Args:
        root: unused (``path`` says where).
        download: must be false: the dataset has to be on this machine already.
        num_clients: unused here; with ``client_column`` the ``natural`` partition checks it.
        rng: draws the test split when the dataset has none.
        path: a ``save_to_disk`` folder, a folder of data files (``load_dataset``), or a cached dataset's name.
        input_column: the column of inputs.
        label_column: the column of labels, integers in ``[0, num_classes)``.
        client_column: optional column of client ids (any values); each distinct id (in sorted order) is a
            natural client (``data.partition.name=natural``).
        train_split: the split to train on, for a dataset with splits.
        test_split: the split to test on; without it, a stratified ``test_fraction`` of the train split.
        test_fraction: share of each class held out when there is no ``test_split``, in (0, 1).
        cache_dir: the Hugging Face cache to read (``load_dataset``'s), e.g. for a cache outside the default.
    """
    _check("path", path, bool(path), "give the folder of a local Hugging Face dataset")
    if download:
        raise ConfigError("`data.download=true` is not supported for `data.dataset=hf`: save the dataset with "
                          "`datasets.load_dataset(...).save_to_disk(folder)` where there is network, then set "
                          "`data.params.path=folder`.")
    train, test = _load(path, train_split, test_split, cache_dir)
    columns = [input_column, label_column] + ([client_column] if client_column else [])
    for key, column in zip(("input_column", "label_column", "client_column"), columns, strict=False):
        _check(key, column, column in train.column_names, f"choose one of {', '.join(train.column_names)}")
    # Images: an `Image` feature or a uint8 `Array2D`/`Array3D` (whose numpy format comes back as int64).
    feature = train.features[input_column]
    image = isinstance(feature, _datasets().Image) or getattr(feature, "dtype", None) == "uint8"
    train_np = train.with_format("numpy")
    x, y = _inputs(train_np[input_column], input_column, image), np.asarray(train_np[label_column], dtype=np.int64)
    ids = np.unique(np.asarray(train_np[client_column]), return_inverse=True)[1].reshape(-1) if client_column else None
    clients = ids
    if test is not None:
        test_np = test.with_format("numpy")
        x_test = _inputs(test_np[input_column], input_column, image)
        y_test = np.asarray(test_np[label_column], dtype=np.int64)
    else:
        _check("test_fraction", test_fraction, 0 < test_fraction < 1, "choose a fraction in (0, 1), e.g. 0.2")
        train_idx, test_idx = _stratified_split(y, test_fraction, rng)
        x_test, y_test = x[torch.from_numpy(test_idx)], y[test_idx]
        x, y = x[torch.from_numpy(train_idx)], y[train_idx]
        clients = None if clients is None else clients[train_idx]
    if x.is_floating_point() and x.dim() == 4:
        x, x_test = _standardise(x, x_test)
    seen = max(y.max(initial=0), y_test.max(initial=0)) + 1
    num_classes = int(getattr(train.features[label_column], "num_classes", 0) or seen)
    client_indices = None
    if clients is not None and ids is not None:
        order = np.argsort(clients, kind="stable")  # rows of client 0, then client 1, ...: one sort, no per-id scan
        client_indices = np.split(order, np.cumsum(np.bincount(clients, minlength=ids.max() + 1))[:-1])
    return FederatedDataset(x, torch.from_numpy(y), x_test, torch.from_numpy(y_test), num_classes,
                            tuple(x.shape[1:]), client_indices)

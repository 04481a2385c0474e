"""The predecessor's other torchvision sets: ``kmnist``, ``emnist``, ``cifar100`` and ``stl10``.

Each one is torchvision's own dataset class pointed at ``data.root`` (``download=data.download``), turned once into
standardised NCHW float32 tensors, as `csfl_fabric.data.datasets` does for MNIST and CIFAR-10. None has natural
clients: split them with a partitioner (``iid``, ``dirichlet``, ``quantity_skew``, ...).
"""

from __future__ import annotations

import numpy as np

from csfl_fabric.data.datasets import FederatedDataset, _check, _load_torchvision
from csfl_fabric.registry import DATASETS

#: torchvision's EMNIST splits (``torchvision.datasets.EMNIST.splits``), listed here to reject a typo before loading.
EMNIST_SPLITS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")


@DATASETS.register("kmnist")
def kmnist(*, root: str, download: bool, num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    """Kuzushiji-MNIST (Clanuwat et al. 2018, https://arxiv.org/abs/1812.01718): 60k/10k images ``(1, 28, 28)``.

    Read from ``{root}/KMNIST/raw`` (fetched first if ``download``); standardised with train statistics.
    """
    return _load_torchvision("kmnist", "KMNIST", "KMNIST/raw", root, download)


@DATASETS.register("emnist")
def emnist(
    *, root: str, download: bool, num_clients: int, rng: np.random.Generator, split: str = "balanced"
) -> FederatedDataset:
    """EMNIST (Cohen et al. 2017, https://arxiv.org/abs/1702.05373) via torchvision: images ``(1, 28, 28)``.

    Read from ``{root}/EMNIST/raw/emnist-{split}-{train,test}-*-ubyte`` (fetched if ``download``). As torchvision
    loads them, the images are transposed against MNIST's (EMNIST's own storage order); a CNN does not mind.

    Args:
        root: the folder holding ``EMNIST/``.
        download: fetch the files first.
        num_clients: unused (no natural clients).
        rng: unused.
        split: ``byclass`` (62 classes, 814k images), ``bymerge`` (47), ``balanced`` (47, 131k), ``letters``
            (labels 1-26 of 27 classes; 0 is torchvision's unused ``N/A``), ``digits`` (10, 280k) or ``mnist``
            (10, 70k).
    """
    _check("split", split, split in EMNIST_SPLITS, f"choose one of {', '.join(EMNIST_SPLITS)}")
    return _load_torchvision("emnist", "EMNIST", f"EMNIST/raw/emnist-{split}-*", root, download, split=split)


@DATASETS.register("cifar100")
def cifar100(*, root: str, download: bool, num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    """CIFAR-100 (Krizhevsky 2009) via torchvision: 50k/10k images ``(3, 32, 32)``, the 100 fine labels.

    Read from ``{root}/cifar-100-python`` (fetched if ``download``); standardised per channel with train statistics.
    """
    return _load_torchvision("cifar100", "CIFAR100", "cifar-100-python", root, download)


@DATASETS.register("stl10")
def stl10(*, root: str, download: bool, num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    """STL-10 (Coates et al., AISTATS 2011) via torchvision: the labelled 5k/8k images ``(3, 96, 96)``, 10 classes.

    Read from ``{root}/stl10_binary`` (fetched if ``download``: a 2.6 GB archive); the 100k unlabelled images are
    not used. Standardised per channel with train statistics.
    """
    return _load_torchvision("stl10", "STL10", "stl10_binary", root, download,
                             splits_as=({"split": "train"}, {"split": "test"}))

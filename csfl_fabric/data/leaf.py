"""LEAF's natural federated datasets, read from LEAF's own preprocessed JSON: ``femnist`` and ``shakespeare``.

Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018, https://arxiv.org/abs/1812.01097,
https://github.com/TalwalkarLab/leaf. LEAF's ``preprocess.sh`` writes ``data/train/*.json`` and
``data/test/*.json``, each an object with ``users`` (ids), ``num_samples`` and ``user_data``
(``{user: {"x": [...], "y": [...]}}``). Every LEAF user (a FEMNIST writer, a Shakespeare speaking role) becomes
one client (``data.partition.name=natural``, ``data.num_clients`` = their number). The samples of all clients are
held once as tensors and each client is an index array into them, so 3,500 writers cost what 35 clients do.

Nothing is downloaded at run time: LEAF's scripts fetch and preprocess the raw data (see `leaf_command`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csfl_fabric.data.datasets import FederatedDataset, _check
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import DATASETS

#: LEAF's Shakespeare vocabulary (``ALL_LETTERS`` in ``leaf/models/utils/language_utils.py``): 80 characters;
#: a character's class is its position here.
SHAKESPEARE_VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"

#: The preprocessing of LEAF's paper experiments (``leaf/paper_experiments/*.sh``), run in ``leaf/data/<name>``.
LEAF_PREPROCESS = {
    "femnist": "./preprocess.sh -s niid --sf 0.05 -k 100 -t sample",
    "shakespeare": "./preprocess.sh -s niid --sf 0.05 -k 64 -tf 0.9 -t sample",
}
TEST_SPLITS = ("client", "central")
Arrays = tuple[np.ndarray, np.ndarray]


def leaf_command(name: str) -> str:
    """The shell commands that produce LEAF's JSON files for dataset ``name`` (``femnist`` or ``shakespeare``)."""
    return (f"git clone https://github.com/TalwalkarLab/leaf && cd leaf/data/{name} && {LEAF_PREPROCESS[name]}, "
            f"then set `data.root=leaf/data/{name}/data`")


def _split_dirs(name: str, root: str, download: bool) -> tuple[Path, Path]:
    """``(train, test)`` folders under ``root``, ``root/data`` or ``root/<name>/data``, or one `ConfigError`."""
    base = Path(os.path.expanduser(root))
    for folder in (base, base / "data", base / name / "data"):
        if any((folder / "train").glob("*.json")) and (folder / "test").is_dir():
            return folder / "train", folder / "test"
    start = ("`data.download=true` cannot fetch LEAF data (nothing is downloaded at run time)" if download
             else f"Dataset `{name}` not found under `data.root={root}`")
    raise ConfigError(
        f"{start}: expected LEAF's JSON files in `{root}/train/*.json` and `{root}/test/*.json` (also looked in "
        f"`{root}/data` and `{root}/{name}/data`); produce them with LEAF's scripts: {leaf_command(name)}."
    )


def _read_users(folder: Path, convert: Callable[[dict[str, Any], str], Arrays]) -> dict[str, Arrays]:
    """Every user of the folder's JSON files (sorted by file name, then in each file's ``users`` order) as arrays.

    Only ``users`` is trusted for membership: LEAF's split script leaves empty ``user_data`` entries of users it drops.
    Each file's Python lists are converted and dropped before the next file is parsed, so the parsed JSON of one
    file at a time is alive, not the whole dataset's. A file is converted in one piece (one numpy conversion, or one
    vocabulary lookup, per file rather than per user) and its users are views of it.
    """
    users: dict[str, Arrays] = {}
    for path in sorted(folder.glob("*.json")):
        with open(path) as f:
            content = json.load(f)
        if not isinstance(content, dict) or not {"users", "user_data"} <= set(content):
            raise ConfigError(f"LEAF file `{path}` lacks `users` or `user_data`: it is not one of LEAF's JSON files.")
        records = [content["user_data"].get(user) for user in content["users"]]
        for user, record in zip(content["users"], records, strict=True):
            if record is None or len(record.get("x", ())) != len(record.get("y", ())):
                raise ConfigError(f"LEAF file `{path}`: user `{user}` has no `user_data` entry with as many x as y.")
        x, y = convert({k: [v for r in records for v in r[k]] for k in ("x", "y")}, str(path))
        cuts = np.cumsum([len(r["y"]) for r in records])[:-1]
        users.update(zip(content["users"], zip(np.split(x, cuts), np.split(y, cuts), strict=True), strict=True))
        del content, records
    return users


def _concat(parts: list[Arrays], empty: Arrays) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """One x and one y tensor from per-user parts, and each part's index array into them."""
    parts = parts or [empty]
    sizes = np.array([len(y) for _, y in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    indices = [np.arange(offsets[i], offsets[i + 1], dtype=np.int64) for i in range(len(parts))]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    return x, torch.from_numpy(np.concatenate([p[1] for p in parts])), indices


def load_leaf(
    name: str,
    root: str,
    download: bool,
    rng: np.random.Generator,
    convert: Callable[[dict[str, Any], str], Arrays],
    empty: Arrays,
    num_classes: int,
    *,
    test_split: str,
    min_samples: int,
    fraction: float,
) -> FederatedDataset:
    """Read LEAF's train and test JSON of ``name`` and keep the clients the options select; see `femnist`."""
    _check("test_split", test_split, test_split in TEST_SPLITS, f"choose one of {', '.join(TEST_SPLITS)}")
    _check("min_samples", min_samples, isinstance(min_samples, int) and min_samples >= 0, "use an integer >= 0")
    _check("fraction", fraction, isinstance(fraction, (int, float)) and 0 < fraction <= 1, "use a fraction in (0, 1]")
    train_dir, test_dir = _split_dirs(name, root, download)
    train, test = _read_users(train_dir, convert), _read_users(test_dir, convert)
    kept = [u for u, (_, y) in train.items() if len(y) >= max(min_samples, 1)]
    if fraction < 1:
        # A uniform sample of the clients, in their file order (LEAF's own --sf samples users before the split).
        pick = rng.choice(len(kept), size=max(1, round(fraction * len(kept))), replace=False)
        kept = [kept[i] for i in np.sort(pick)]
    if not kept:
        raise ConfigError(f"Invalid `data.params.min_samples={min_samples}`: no LEAF client under `data.root={root}` "
                          f"has that many train samples; lower it.")
    x_train, y_train, client_indices = _concat([train[u] for u in kept], empty)
    # client: the kept clients' own LEAF test samples (LEAF's metric, a sample-weighted mean over clients, is the
    # accuracy on their union); central: every test sample on disk, also for a user split (-t user) or dropped users.
    test_users = [u for u in kept if u in test] if test_split == "client" else list(test)
    x_test, y_test, test_indices = _concat([test[u] for u in test_users], empty)
    return FederatedDataset(x_train, y_train, x_test, y_test, num_classes, tuple(x_train.shape[1:]), client_indices,
                            client_test_indices=test_indices if test_split == "client" else None)


def _femnist_arrays(record: dict[str, Any], path: str) -> Arrays:
    x = np.asarray(record["x"], dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 784:
        if x.size == 0:
            return x.reshape(0, 1, 28, 28), np.zeros(0, dtype=np.int64)
        raise ConfigError(f"LEAF file `{path}`: FEMNIST images must be lists of 784 pixels but got shape {x.shape}.")
    return x.reshape(-1, 1, 28, 28), np.asarray(record["y"], dtype=np.int64)


def _leaf_factory(name: str, convert: Callable[[dict[str, Any], str], Arrays], empty: Arrays, num_classes: int,
                  doc: str) -> Callable[..., FederatedDataset]:
    """The registered factory of LEAF dataset ``name``: the one signature both LEAF datasets share."""

    def factory(
        *,
        root: str,
        download: bool,
        num_clients: int,
        rng: np.random.Generator,
        test_split: str = "client",
        min_samples: int = 0,
        fraction: float = 1.0,
    ) -> FederatedDataset:
        return load_leaf(name, root, download, rng, convert, empty, num_classes,
                         test_split=test_split, min_samples=min_samples, fraction=fraction)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return DATASETS.register(name)(factory)


_FEMNIST_DOC = """LEAF's FEMNIST: 28x28 handwritten digits and letters (62 classes), one client per writer.

Pixels are LEAF's, in [0, 1] (white is 1), not standardised, as LEAF's CNN sees them; use ``femnist_cnn``.
The defaults keep what LEAF's preprocessing wrote: LEAF's filters (``-k``, ``--sf``, the 90/10 per-writer
split of ``-t sample``) are applied by its scripts, and its paper runs
``./preprocess.sh -s niid --sf 0.05 -k 100 -t sample``; ``-s niid --sf 1.0 -k 0 -t sample``
gives all 3,550 writers (805k images, 2.5 GB as float32).

Args:
    root: a folder holding LEAF's ``train/`` and ``test/`` (or ``data/train`` ..., or ``femnist/data/train`` ...).
    download: cannot download; with missing files the error says how to make them.
    num_clients: unused here; the ``natural`` partition checks it against the number of writers kept.
    rng: draws the writers kept when ``fraction < 1``.
    test_split: ``client`` (default, LEAF's): the central test set is the union of the kept writers' own LEAF
        test samples (``client_test_indices`` says whose); ``central``: every test sample on disk, whichever
        writers are kept (the choice for LEAF's user split, ``-t user``, whose test writers are not train writers).
    min_samples: keep writers with at least this many train samples (LEAF's ``-k k`` keeps users with more
        than k samples before its split). 0: every writer with a train sample.
    fraction: share of the (remaining) writers to keep, drawn uniformly with ``rng``; 1.0 keeps all.

Returns:
    Inputs ``(N, 1, 28, 28)`` float32, labels in [0, 62) (digits, then upper-case, then lower-case letters).
"""
femnist = _leaf_factory("femnist", _femnist_arrays, (np.zeros((0, 1, 28, 28), dtype=np.float32),
                        np.zeros(0, dtype=np.int64)), 62, _FEMNIST_DOC)


#: Vocabulary position of every Unicode code point up to the largest in the vocabulary; -1 elsewhere.
_CODES = np.full(max(map(ord, SHAKESPEARE_VOCAB)) + 1, -1, dtype=np.int16)
_CODES[[ord(c) for c in SHAKESPEARE_VOCAB]] = np.arange(len(SHAKESPEARE_VOCAB))


def encode_text(text: str, where: str) -> np.ndarray:
    """Vocabulary positions (uint8) of ``text``'s characters; one unknown character is a `ConfigError`.

    >>> encode_text("Hi!", "example").tolist()
    [32, 61, 2]
    """
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per character, vectorised
    codes = np.where(points < len(_CODES), _CODES[np.minimum(points, len(_CODES) - 1)], -1)
    if (codes < 0).any():
        bad = chr(int(points[np.argmax(codes < 0)]))
        raise ConfigError(f"{where}: character {bad!r} is not in LEAF's 80-character Shakespeare vocabulary.")
    return codes.astype(np.uint8)


def _shakespeare_arrays(record: dict[str, Any], path: str) -> Arrays:
    xs, ys = record["x"], record["y"]
    if not xs:
        return np.zeros((0, 80), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    length = len(xs[0])
    if any(len(s) != length for s in xs) or any(len(c) != 1 for c in ys):
        raise ConfigError(f"LEAF file `{path}`: Shakespeare x must be strings of one length and y single characters.")
    x = encode_text("".join(xs), f"LEAF file `{path}`").reshape(len(xs), length)
    return x, encode_text("".join(ys), f"LEAF file `{path}`").astype(np.int64)


_SHAKESPEARE_DOC = """LEAF's Shakespeare: next-character prediction, one client per speaking role of a play.

Each sample is LEAF's 80-character string (``x``) and the character that follows it (``y``), both as
positions in `SHAKESPEARE_VOCAB` (80 classes; inputs stored as uint8 token ids, 80 bytes a sample); use
``char_lstm``, whose accuracy is LEAF's character accuracy. LEAF's paper runs
``./preprocess.sh -s niid --sf 0.05 -k 64 -tf 0.9 -t sample``; ``--sf 1.0 -k 0`` gives all 1,129 roles
(4.2M samples). Args as for `femnist`.

Returns:
    Inputs ``(N, 80)`` uint8 token ids, labels in [0, 80).
"""
shakespeare = _leaf_factory("shakespeare", _shakespeare_arrays, (np.zeros((0, 80), dtype=np.uint8),
                            np.zeros(0, dtype=np.int64)), len(SHAKESPEARE_VOCAB), _SHAKESPEARE_DOC)

"""Memory benchmark: flat in the number of clients, flat over rounds and runs, and against the naive layout.

Memory is `csfl_callbacks.accounting.process_memory`: anonymous and shared memory of the process and its
children, pages shared between them counted once (PSS); each part runs in fresh child processes.

1. Peak memory (sampled after every client and round) of a 3-round run with 10, 100, 1000 and 5000
   clients (in that order, in one process per dataset) on the same data: digits tiled 4x (5748 samples,
   CNN) and Synthetic(0.5, 0.5) with 100 devices pooled (logreg), split IID. Target peak(5000) / peak(10)
   <= 1.10, and 0 worker processes.
2. Memory at round 10 and round 300 of a 1000-client run (digits, logreg, eval every 10 rounds), with three
   selection methods one after another in one process: random, power-of-choice (probes candidates' losses)
   and Oort. Target: growth <= 2% against round 10 of the first method.
4. FEMNIST-shaped natural clients: 3,500 writers of 28x28 images (62 classes, 2-7 images each, in LEAF's JSON
   layout, read by the real ``femnist`` loader, ``femnist_cnn``, 2 local steps), against the same data with the
   writers merged into 35 clients, each in a fresh process. Target peak(3,500) / peak(35) <= 1.10.
3. The naive layout that killed the predecessor: a DataLoader per client over a `Subset` with num_workers=2
   (persistent workers) and a deepcopy of the model per client, for ``--naive-clients`` clients (default 32:
   64 worker processes; sized to finish in about a minute on a shared 2-core machine), 2 rounds, stopped as
   soon as it reaches 4 GiB. Its peak against csfl_fabric's peak for the same clients.

    PYTHONPATH=. python bench/memory.py [--naive-clients 32] [--rounds 300] [--only femnist]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
CAP = 4 * GIB
METHODS = ("heuristic.random", "heuristic.pow_d", "system.oort")


def _register_datasets() -> None:
    """The same data for every client count: no dataset here grows with ``num_clients``."""
    from csfl_fabric.data.datasets import FederatedDataset, digits, synthetic
    from csfl_fabric.registry import DATASETS

    @DATASETS.register("bench.digits_x4")
    def digits_x4(**kw: Any) -> FederatedDataset:
        """Digits with its train set tiled 4x (5748 samples)."""
        d = digits(**kw)
        return FederatedDataset(d.x_train.repeat(4, 1, 1, 1), d.y_train.repeat(4), d.x_test, d.y_test, d.num_classes,
                                d.input_shape)

    @DATASETS.register("bench.synthetic_pooled")
    def synthetic_pooled(*, num_clients: int, **kw: Any) -> FederatedDataset:
        """Synthetic(0.5, 0.5) of 100 devices, pooled (client splits dropped)."""
        d = synthetic(num_clients=100, alpha=0.5, beta=0.5, **kw)
        return FederatedDataset(d.x_train, d.y_train, d.x_test, d.y_test, d.num_classes, d.input_shape)


WRITERS, MERGED = 3500, 35


def _register_femnist_merged() -> None:
    from csfl_fabric.data.datasets import FederatedDataset
    from csfl_fabric.data.leaf import femnist
    from csfl_fabric.registry import DATASETS

    @DATASETS.register("bench.femnist_merged")
    def femnist_merged(**kw: Any) -> FederatedDataset:
        """The same LEAF files as ``femnist``, with every 100 consecutive writers merged into one client."""
        d = femnist(**kw)
        assert d.client_indices is not None
        groups = np.array_split(np.arange(len(d.client_indices)), MERGED)
        merged = [np.concatenate([d.client_indices[w] for w in g]) for g in groups]
        return FederatedDataset(d.x_train, d.y_train, d.x_test, d.y_test, d.num_classes, d.input_shape, merged)


def write_femnist_shaped(root: Path, writers: int = WRITERS, per_file: int = 100) -> None:
    """LEAF's FEMNIST layout: train/ and test/ JSON of 100 writers a file (LEAF's MAX_WRITERS), pixels k/255."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
    for f, start in enumerate(range(0, writers, per_file)):
        users = [f"f{w:04d}_{w % 100:02d}" for w in range(start, min(start + per_file, writers))]
        for split, sizes in (("train", rng.integers(2, 8, len(users))), ("test", np.ones(len(users), dtype=int))):
            data = {u: {"x": np.round(rng.integers(0, 256, (n, 784)) / 255, 3).tolist(),
                        "y": rng.integers(0, 62, n).tolist()} for u, n in zip(users, sizes, strict=True)}
            content = {"users": users, "num_samples": sizes.tolist(), "user_data": data}
            (root / split / f"all_data_{f}_{split}.json").write_text(json.dumps(content))


def child_femnist(dataset: str, clients: int) -> dict[str, Any]:
    """One FEMNIST-shaped run in this (fresh) process.

    A fresh process per case, not both in one: here the second run in a process peaked ~0.1 GiB higher whichever
    came first (the first run's data was still uncollected when the second loaded its own), which would swamp the
    difference this part measures.
    """
    import csfl_fabric

    _register_femnist_merged()
    with tempfile.TemporaryDirectory() as tmp:
        write_femnist_shaped(Path(tmp) / "leaf")
        cfg = _config(dataset, clients, 3, tmp)
        cfg["data"].update(root=str(Path(tmp) / "leaf"), partition={"name": "natural", "params": {}})
        cfg["train"].update(model="femnist_cnn", local_steps=2)
        cfg["rounds"]["eval_every"] = 3
        sampler = Sampler()
        csfl_fabric.run(cfg, callbacks=[sampler])
    return {"peak": sampler.peak, "workers": sampler.workers}


class Sampler:
    """Process memory after every client and round, and the most worker processes seen."""

    def __init__(self, at_rounds: tuple[int, ...] = ()) -> None:
        self.peak = 0
        self.workers = 0
        self.at_rounds = at_rounds
        self.readings: dict[int, int] = {}

    def _sample(self) -> int:
        from csfl_callbacks.accounting import descendants, process_memory

        value = process_memory()
        self.peak = max(self.peak, value)
        self.workers = max(self.workers, len(descendants(os.getpid())))
        return value

    def on_client_end(self) -> None:
        if not self.at_rounds:
            self._sample()

    def on_round_end(self, state: Any) -> None:
        if not self.at_rounds or state.round + 1 in self.at_rounds:
            self.readings[state.round + 1] = self._sample()


def _config(dataset: str, clients: int, rounds: int, tmp: str, **extra: Any) -> dict[str, Any]:
    model = "logreg" if dataset == "bench.synthetic_pooled" or extra.pop("logreg", False) else "cnn"
    return {"experiment": "bench_memory", "data": {"dataset": dataset, "num_clients": clients,
                                                   "partition": {"name": "iid", "params": {}}},
            "train": {"model": model, "batch_size": 16, "lr": 0.05},
            "rounds": {"num_rounds": rounds, "clients_per_round": 10, **extra},
            "logging": {"wandb": "disabled", "progress": False, "dir": tmp}}


def child_peak(dataset: str, counts: list[int]) -> dict[str, Any]:
    """One run per client count, smallest first, in one process (imports cost ~10 s a process here).

    A later run could only be inflated by what an earlier one left behind, so this errs against the target.
    """
    import csfl_fabric

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            sampler = Sampler()
            csfl_fabric.run(_config(dataset, n, 3, tmp), callbacks=[sampler])
            out[n] = {"peak": sampler.peak, "workers": sampler.workers}
    return out


def child_rounds(clients: int, rounds: int) -> dict[str, Any]:
    import csfl_fabric

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            sampler = Sampler(at_rounds=(10, rounds))
            cfg = _config("digits", clients, rounds, tmp, eval_every=10, logreg=True)
            cfg["selector"] = {"name": method, "params": {}}
            csfl_fabric.run(cfg, callbacks=[sampler])
            out[method] = sampler.readings
    return out


def child_naive(clients: int, rounds: int) -> dict[str, Any]:
    """The predecessor's layout; stops at `CAP`."""
    import torch
    from csfl_callbacks.accounting import descendants, process_memory
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from csfl_fabric.build import build_dataset
    from csfl_fabric.config import load_config
    from csfl_fabric.registry import MODELS

    torch.set_num_threads(1)
    cfg = load_config(_config("bench.digits_x4", clients, rounds, "/tmp"))
    dataset, parts = build_dataset(cfg)
    data = TensorDataset(dataset.x_train, dataset.y_train)
    model = MODELS.build("cnn", {}, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
    loaders = [DataLoader(Subset(data, p.tolist()), batch_size=16, shuffle=True, num_workers=2, persistent_workers=True)
               for p in parts]
    models: list[torch.nn.Module] = []
    peak, stopped = 0, False
    for _ in range(rounds):
        for c, loader in enumerate(loaders):
            if len(models) <= c:
                models.append(copy.deepcopy(model))
            local = models[c]
            opt = torch.optim.SGD(local.parameters(), lr=0.05)
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(local(x), y).backward()
                opt.step()
            if c % 16 == 15 or c == len(loaders) - 1:  # PSS of ~100 processes takes seconds: sample every 16
                peak = max(peak, process_memory())
                if peak >= CAP:
                    stopped = True
                    break
        if stopped:
            break
    return {"peak": peak, "workers": len(descendants(os.getpid())), "stopped_at_cap": stopped}


def _spawn(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--naive-clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--only", choices=["femnist"], help="run only this part (4)")
    args = parser.parse_args()
    if args.child:
        _register_datasets()
        kind, *rest = args.child
        result = {"peak": lambda: child_peak(rest[0], [int(n) for n in rest[1:]]),
                  "rounds": lambda: child_rounds(1000, args.rounds),
                  "naive": lambda: child_naive(int(rest[0]), 2),
                  "femnist": lambda: child_femnist(rest[0], int(rest[1]))}[kind]()
        print(json.dumps(result))
        return

    started = time.perf_counter()
    if args.only == "femnist":
        _femnist_part()
        print(f"\n({time.perf_counter() - started:.0f} s)")
        return
    print("1. Peak process memory against the number of clients (same data, 3 rounds, 10 clients a round)")
    print(f"   {'dataset':<24}{'clients':>8}{'peak GiB':>10}{'/ peak(10)':>12}{'workers':>9}")
    for dataset in ("bench.digits_x4", "bench.synthetic_pooled"):
        peaks = _spawn("peak", dataset, "10", "100", "1000", "5000")
        base = peaks["10"]["peak"]
        for n, r in peaks.items():
            print(f"   {dataset:<24}{n:>8}{r['peak'] / GIB:>10.3f}{r['peak'] / base:>12.3f}{r['workers']:>9}")

    print(f"\n2. Process memory at rounds 10 and {args.rounds}, 1000 clients, three methods in one process")
    rounds = _spawn("rounds", "1000")
    first = rounds[METHODS[0]]["10"]
    for method, readings in rounds.items():
        cells = "  ".join(f"round {k}: {v / GIB:.3f} GiB ({v / first:.3f})" for k, v in readings.items())
        print(f"   {method:<18}{cells}")
    growth = max(v for r in rounds.values() for v in r.values()) / first - 1
    print(f"   largest growth against round 10 of the first method: {growth:+.2%} (target <= 2%)")

    n = args.naive_clients
    print(f"\n3. Naive layout ({n} clients: a DataLoader with 2 persistent workers and a model copy each; "
          f"2 rounds; stopped at {CAP / GIB:.0f} GiB)")
    naive, ours = _spawn("naive", str(n)), _spawn("peak", "bench.digits_x4", str(n))[str(n)]
    print(f"   naive: peak {naive['peak'] / GIB:.3f} GiB, {naive['workers']} worker processes"
          f"{', stopped at the cap' if naive['stopped_at_cap'] else ''}")
    print(f"   csfl_fabric: peak {ours['peak'] / GIB:.3f} GiB, {ours['workers']} worker processes")
    extra = (naive["peak"] - ours["peak"]) / n
    print(f"   naive / csfl_fabric: {naive['peak'] / ours['peak']:.1f}x; the naive layout adds {extra / 2**20:.0f} MiB "
          f"a client, so it would pass {CAP / GIB:.0f} GiB at about {(CAP - ours['peak']) / extra:.0f} clients")
    _femnist_part()
    print(f"\n({time.perf_counter() - started:.0f} s)")


def _femnist_part() -> None:
    print(f"\n4. FEMNIST-shaped: {WRITERS} writers as natural clients against the same data in {MERGED} clients "
          "(femnist_cnn, 3 rounds, 10 clients a round, 2 local steps)")
    peaks = {n: _spawn("femnist", dataset, str(n)) for dataset, n in (("bench.femnist_merged", MERGED),
                                                                       ("femnist", WRITERS))}
    base = peaks[MERGED]["peak"]
    for n, r in peaks.items():
        print(f"   {n:>5} clients: peak {r['peak'] / GIB:.3f} GiB ({r['peak'] / base:.3f}), {r['workers']} workers")
    print(f"   peak({WRITERS}) / peak({MERGED}) = {peaks[WRITERS]['peak'] / base:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()

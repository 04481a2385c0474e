"""The GPU checks of `bench/gpu.sh` that are not the test suite or the speed bench; each prints one result line.

    cache      `EmptyCudaCache` hands reserved-but-unused CUDA memory back (reserved before/after, GiB released)
    ramguard   `RamGuard`'s emergency cleanup, triggered by a reading at 100%, empties the CUDA cache too
    round      seconds of one round of ``--clients`` clients of the small CNN (digits, iid: 1-2 images each, one
               local step), per backend, after a warm-up round, in clients per second

On a machine without CUDA, ``--device cpu`` skips the first two (saying so) and runs the round on the CPU:
what `bash bench/gpu.sh --cpu` runs to check the script itself.

    python bench/gpu_checks.py [--device cuda] [--precision 32-true] [--clients 1000] [--only cache ramguard round]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3


def _fill_cache() -> int:
    """Allocate and free 512 MiB on the GPU: reserved by the caching allocator, not allocated."""
    x = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    del x
    torch.cuda.synchronize()
    return torch.cuda.memory_reserved()


def check_cache() -> tuple[str, bool]:
    from csfl_callbacks.memory import EmptyCudaCache

    before = _fill_cache()
    metrics: dict[str, float] = {}
    EmptyCudaCache(every_n_rounds=1).round_end(0, metrics)
    after = torch.cuda.memory_reserved()
    ok = after < before and metrics.get("mem/cuda_cache_released_gb", 0) > 0
    return (f"EmptyCudaCache: reserved {before / GIB:.3f} -> {after / GIB:.3f} GiB, reported "
            f"{metrics.get('mem/cuda_cache_released_gb', 0):.3f} GiB released: {'OK' if ok else 'FAILED'}"), ok


def check_ramguard() -> tuple[str, bool]:
    from csfl_callbacks.accounting import RamReading
    from csfl_callbacks.memory import RamGuard

    released: list[int] = []
    before = _fill_cache()
    full = RamReading(used=1, limit=1, source="bench")  # 100% of the limit: the guard must clean up
    guard = RamGuard(0.5, reader=lambda: full, release=[lambda: released.append(1)])
    cleaned = guard.check()
    after = torch.cuda.memory_reserved()
    ok = cleaned and after < before and released == [1] and guard.cleanups == 1
    return (f"RamGuard emergency cleanup: reserved {before / GIB:.3f} -> {after / GIB:.3f} GiB, caches released "
            f"{len(released)}: {'OK' if ok else 'FAILED'}"), ok


class _Clock:
    """Seconds between round starts (after the device finished the previous round's work)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.times, self.last = cuda, [], None

    def on_round_start(self, state: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def check_round(device: str, precision: str, clients: int) -> list[str]:
    from csfl_fabric.build import build_run
    from csfl_fabric.config import load_config

    lines = []
    for backend in ("cohort", "sequential"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(REPO / "configs" / "quickstart.yaml", [
                f"data.num_clients={clients}", "data.partition.name=iid", f"rounds.clients_per_round={clients}",
                "rounds.num_rounds=3", "rounds.eval_every=3", f"train.backend={backend}",
                f"train.cohort_size={min(clients, 256)}", f"fabric.accelerator={device}",
                f"fabric.precision={precision}", "logging.wandb=disabled", "logging.progress=false",
                f"logging.dir={tmp}"])
            clock = _Clock(device == "cuda")
            run = build_run(cfg, callbacks=[clock])
            run.run_dir.mkdir(parents=True, exist_ok=True)
            run.orchestrator.run()
        seconds = clock.times[1]  # round 1: after the warm-up round 0; round 2 evaluates and is not closed
        lines.append(f"round of {clients} clients, {backend:<10} {device} {precision}: {seconds:.3f} s, "
                     f"{clients / seconds:,.0f} clients/s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--only", nargs="+", default=["cache", "ramguard", "round"],
                        choices=["cache", "ramguard", "round"])
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_checks: --device cuda but torch.cuda.is_available() is False")
    failed = False
    for check in args.only:
        if check == "round":
            print("\n".join(check_round(args.device, args.precision, args.clients)), flush=True)
        elif not cuda:
            print(f"{check}: skipped (needs CUDA; --device cpu)", flush=True)
        else:
            line, ok = check_cache() if check == "cache" else check_ramguard()
            print(line, flush=True)
            failed |= not ok
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

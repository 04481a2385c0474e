"""Container-aware memory accounting: the RAM limit a process actually has, and what it uses.

psutil reports the host's RAM, which inside Docker or a SLURM job is not the process's limit and makes a
70% threshold meaningless there. Here the limit is the smallest of

- physical RAM (``MemTotal``; usage = ``MemTotal - MemAvailable``),
- the memory limit of this process's cgroup and of each of its ancestors (cgroup v2 ``memory.max``,
  v1 ``memory.limit_in_bytes``; usage = that cgroup's usage minus its inactive, reclaimable file cache),
- a SLURM job's memory (``SLURM_MEM_PER_NODE``, or ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_ON_NODE``, in MB;
  usage = this process tree's memory),

and the usage reported is the one of the constraint that gives that limit. The ``/proc`` and cgroup roots and
the environment are arguments, so tests read fixture files. Linux only; elsewhere the physical reading comes
from psutil. Imports nothing from the rest of the package.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded down to a page).
_UNLIMITED = 1 << 60
GIB = 1024**3


@dataclass(frozen=True)
class RamReading:
    """Memory in use against the limit that binds this process.

    Attributes:
        used: bytes in use, counted the way the limit's owner counts them.
        limit: the smallest limit found, in bytes.
        source: where the limit comes from, e.g. ``physical``, ``cgroup v1 /job_1``, ``slurm``.
    """

    used: int
    limit: int
    source: str

    @property
    def frac(self) -> float:
        """``used / limit``."""
        return self.used / self.limit if self.limit > 0 else 0.0


@dataclass(frozen=True)
class _Constraint:
    limit: int
    source: str
    usage: Callable[[], int]  # read only for the constraint that binds: the others' usage is never needed


def read_ram(
    proc_root: str | Path = "/proc",
    cgroup_root: str | Path = "/sys/fs/cgroup",
    environ: Mapping[str, str] | None = None,
) -> RamReading:
    """The binding memory limit of this process and the usage counted against it.

    Args:
        proc_root: where ``/proc`` is (tests pass a fixture directory).
        cgroup_root: where the cgroup file systems are mounted.
        environ: the environment to read SLURM's variables from (default ``os.environ``).
    """
    return RamReader(0.0, proc_root, cgroup_root, environ)()


class RamReader:
    """`read_ram` that looks for the binding limit only every ``refresh_s`` seconds, and reads just its usage between.

    Finding the limit walks the cgroup hierarchy (~1 ms); reading one usage is ~0.05 ms, cheap enough to check
    after every client.
    """

    def __init__(self, refresh_s: float = 60.0, proc_root: str | Path = "/proc",
                 cgroup_root: str | Path = "/sys/fs/cgroup", environ: Mapping[str, str] | None = None) -> None:
        self.refresh_s = refresh_s
        self.proc_root, self.cgroup_root, self.environ = Path(proc_root), Path(cgroup_root), environ
        self._binding: _Constraint | None = None
        self._found_at = -math.inf

    def __call__(self) -> RamReading:
        """The current reading."""
        if self._binding is None or time.monotonic() - self._found_at >= self.refresh_s:
            env = os.environ if self.environ is None else self.environ
            found = [*cgroup_constraints(self.proc_root, self.cgroup_root), *_slurm(env, self.proc_root),
                     _physical(self.proc_root)]
            self._binding = min(found, key=lambda c: c.limit)  # the first of equal limits: a cgroup beats SLURM
            self._found_at = time.monotonic()
        best = self._binding
        return RamReading(used=max(best.usage(), 0), limit=best.limit, source=best.source)


def cgroup_constraints(proc_root: Path, cgroup_root: Path) -> list[_Constraint]:
    """The memory limits of this process's cgroup and its ancestors (v1 memory controller, else v2)."""
    lines = _read(proc_root / "self" / "cgroup").splitlines()
    v1 = [ln.split(":", 2)[2] for ln in lines if ln.count(":") >= 2 and "memory" in ln.split(":")[1].split(",")]
    v2 = [ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")]
    if v1 and (cgroup_root / "memory").is_dir():
        return _walk(cgroup_root / "memory", v1[0], "v1", "memory.limit_in_bytes", "memory.usage_in_bytes",
                     ("total_inactive_file", "inactive_file"))
    if v2 and (cgroup_root / "cgroup.controllers").exists():
        return _walk(cgroup_root, v2[0], "v2", "memory.max", "memory.current", ("inactive_file",))
    return []


def _walk(base: Path, path: str, version: str, limit_file: str, usage_file: str,
          inactive_keys: tuple[str, ...]) -> list[_Constraint]:
    # From the process's own cgroup up to the mount's root. Inside a cgroup namespace the path is "/" and the
    # mount's root is the container's cgroup, so its limit is still found.
    parts = [p for p in path.strip().split("/") if p]
    found = []
    for depth in range(len(parts), -1, -1):
        rel = "/" + "/".join(parts[:depth])
        level = base.joinpath(*parts[:depth])
        limit = _int_or_none(_read(level / limit_file))
        if limit is None or limit >= _UNLIMITED:
            continue
        usage = functools.partial(_cgroup_usage, level, usage_file, inactive_keys)
        found.append(_Constraint(limit, f"cgroup {version} {rel}", usage))
    return found


def _cgroup_usage(level: Path, usage_file: str, inactive_keys: tuple[str, ...]) -> int:
    usage = _int_or_none(_read(level / usage_file)) or 0
    stat = _keyed(_read(level / "memory.stat"))
    inactive = next((stat[k] for k in inactive_keys if k in stat), 0)
    return usage - inactive


def _slurm(environ: Mapping[str, str], proc_root: Path) -> list[_Constraint]:
    per_node = _int_or_none(environ.get("SLURM_MEM_PER_NODE", ""))
    per_cpu = _int_or_none(environ.get("SLURM_MEM_PER_CPU", ""))
    cpus = _int_or_none(environ.get("SLURM_CPUS_ON_NODE", ""))
    mb = per_node if per_node else (per_cpu * cpus if per_cpu and cpus else None)
    if not mb:  # 0 means "all of the node's memory" to SLURM
        return []
    return [_Constraint(mb * 1024**2, "slurm", lambda: process_memory(proc_root=proc_root))]


def _physical(proc_root: Path) -> _Constraint:
    info = _keyed(_read(proc_root / "meminfo"))
    if "MemTotal" in info:
        total = info["MemTotal"] * 1024
        return _Constraint(total, "physical", functools.partial(_physical_usage, proc_root / "meminfo", total))
    import psutil  # not Linux: no /proc

    vm = psutil.virtual_memory()
    return _Constraint(int(vm.total), "physical", lambda: int(vm.total - psutil.virtual_memory().available))


def _physical_usage(meminfo: Path, total: int) -> int:
    # Runs after every client: raw bytes, and find the one line instead of parsing all fifty.
    with open(meminfo, "rb") as fh:
        data = fh.read()
    start = data.find(b"MemAvailable:")
    return total - int(data[start:].split(maxsplit=2)[1]) * 1024 if start >= 0 else 0


def process_memory(pid: int | None = None, proc_root: str | Path = "/proc",
                   children: list[int] | None = None) -> int:
    """Bytes of anonymous and shared memory held by a process and all its descendants, shared pages counted once.

    Each page shared between processes of the tree (forked workers share the parent's pages copy-on-write) is
    divided among them (PSS), so the total is what the tree costs; a sum of RSS would count such pages once per
    process. File-backed pages (code, libraries, page cache) are left out: they are shared with other processes
    and reclaimable. A process without children cannot share anonymous pages, so its cheap ``/proc/<pid>/status``
    counters equal its PSS; ``smaps_rollup`` (20-60 ms a process) is read only when there are children.

    Args:
        pid: the root process (default: this one).
        proc_root: where ``/proc`` is.
        children: the descendants if known (see `ProcessMemoryReader`); default: looked up now.
    """
    proc = Path(proc_root)
    root = "self" if pid is None else str(pid)
    if not (proc / root).is_dir():
        import psutil  # not Linux

        return int(psutil.Process(pid).memory_info().rss)
    if children is None:
        children = descendants(os.getpid() if pid is None else pid, proc)
    if not children:
        status = _keyed(_read(proc / root / "status"))
        return (status.get("RssAnon", 0) + status.get("RssShmem", 0)) * 1024
    total = 0
    for p in [root, *map(str, children)]:
        rollup = _keyed(_read(proc / p / "smaps_rollup"))  # {} if the process ended meanwhile
        # Kernels before 5.7 have no Pss_Anon: fall back to the whole PSS.
        anon = rollup.get("Pss_Anon", 0) + rollup.get("Pss_Shmem", 0)
        total += anon if "Pss_Anon" in rollup else rollup.get("Pss", 0)
    return total * 1024


class ProcessMemoryReader:
    """`process_memory` of this process that looks for its descendants only every ``rescan_s`` seconds.

    Without ``/proc/<pid>/task/<tid>/children`` (a kernel option) finding them scans every process (2-15 ms
    here); worker processes come and go rarely, so once every ``rescan_s`` is enough.
    """

    def __init__(self, rescan_s: float = 10.0, proc_root: str | Path = "/proc") -> None:
        self.rescan_s = rescan_s
        self.proc_root = Path(proc_root)
        self._children: list[int] = []
        self._scanned_at = -math.inf

    def __call__(self) -> int:
        """The current figure in bytes."""
        if time.monotonic() - self._scanned_at >= self.rescan_s:
            self._children = descendants(os.getpid(), self.proc_root)
            self._scanned_at = time.monotonic()
        return process_memory(proc_root=self.proc_root, children=self._children)


def descendants(pid: int, proc_root: str | Path = "/proc") -> list[int]:
    """Ids of all live descendants of ``pid``.

    From ``/proc/<pid>/task/*/children`` where the kernel has them, else from the parent ids in ``/proc/*/stat``.
    """
    proc = Path(proc_root)
    kids_of: Callable[[int], list[int]]
    if (proc / str(pid) / "task" / str(pid) / "children").exists():
        def kids_of(p: int) -> list[int]:
            return [int(k) for task in (proc / str(p) / "task").iterdir() for k in _read(task / "children").split()]
    else:
        table: dict[int, list[int]] = {}
        for entry in proc.iterdir():
            stat = _read(entry / "stat") if entry.name.isdigit() else ""
            if ")" in stat:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                table.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
        kids_of = lambda p: table.get(p, [])  # noqa: E731
    out, todo = [], [pid]
    while todo:
        kids = kids_of(todo.pop())
        out += kids
        todo += kids
    return out


def cuda_memory() -> tuple[int, int]:
    """``(allocated, reserved)`` bytes of PyTorch's CUDA caching allocator on the current device; zeros without CUDA."""
    import torch

    if not torch.cuda.is_initialized():  # a flag; is_available() would query the driver
        return 0, 0
    return int(torch.cuda.memory_allocated()), int(torch.cuda.memory_reserved())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _keyed(text: str) -> dict[str, int]:
    """``key value [kB]`` and ``key: value kB`` lines as ints (the value as written: kB stays kB)."""
    out = {}
    for line in text.splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) >= 2 and fields[1].isdigit():
            out[fields[0]] = int(fields[1])
    return out

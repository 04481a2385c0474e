"""Container-aware accounting read from fixture /proc and cgroup trees (v1, v2, SLURM) and from this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from csfl_callbacks.accounting import GIB, RamReader, descendants, process_memory, read_ram

MIB = 1024**2
MEMINFO = "MemTotal:       33554432 kB\nMemFree:         1000000 kB\nMemAvailable:   25165824 kB\n"  # 32 GiB, 24 free


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    _write(root, {"meminfo": MEMINFO, "self/status": "Name:\tpython\n"})
    return root


def test_physical_ram_when_there_is_no_cgroup_limit(proc: Path, tmp_path: Path) -> None:
    reading = read_ram(proc, tmp_path / "no_cgroups", environ={})
    assert (reading.limit, reading.used, reading.source) == (32 * GIB, 8 * GIB, "physical")
    assert reading.frac == pytest.approx(0.25)


def test_cgroup_v1_takes_the_smallest_limit_up_the_hierarchy(proc: Path, tmp_path: Path) -> None:
    # Prepare: job (4 GiB) inside a parent slice (2 GiB) inside the root (unlimited, as v1 writes it).
    cg = tmp_path / "cgroup"
    stat = "cache 100\ninactive_file 111\ntotal_inactive_file {}\n"
    _write(proc, {"self/cgroup": "5:cpu,cpuacct:/slice/job\n4:memory:/slice/job\n0::/\n"})
    _write(cg, {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/slice/memory.limit_in_bytes": f"{2 * GIB}\n",
        "memory/slice/memory.usage_in_bytes": f"{1536 * MIB}\n",
        "memory/slice/memory.stat": stat.format(512 * MIB),
        "memory/slice/job/memory.limit_in_bytes": f"{4 * GIB}\n",
        "memory/slice/job/memory.usage_in_bytes": f"{1024 * MIB}\n",
        "memory/slice/job/memory.stat": stat.format(0),
    })
    reading = read_ram(proc, cg, environ={})
    # The parent's limit binds; its usage excludes its reclaimable (inactive) file cache, hierarchical total.
    assert (reading.limit, reading.used, reading.source) == (2 * GIB, 1024 * MIB, "cgroup v1 /slice")


def test_cgroup_v2_memory_max_and_unlimited_levels(proc: Path, tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _write(proc, {"self/cgroup": "0::/user.slice/run.scope\n"})
    _write(cg, {
        "cgroup.controllers": "cpu memory\n",
        "user.slice/memory.max": "max\n",
        "user.slice/run.scope/memory.max": f"{3 * GIB}\n",
        "user.slice/run.scope/memory.current": f"{2 * GIB}\n",
        "user.slice/run.scope/memory.stat": f"anon 1\ninactive_file {GIB // 2}\nactive_file 7\n",
    })
    reading = read_ram(proc, cg, environ={})
    assert (reading.limit, reading.used, reading.source) == (3 * GIB, 3 * GIB // 2, "cgroup v2 /user.slice/run.scope")
    assert reading.frac == pytest.approx(0.5)


def test_cgroup_namespace_root_holds_the_container_limit(proc: Path, tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _write(proc, {"self/cgroup": "0::/\n"})
    _write(cg, {"cgroup.controllers": "memory\n", "memory.max": f"{GIB}\n", "memory.current": f"{GIB // 4}\n",
                "memory.stat": "inactive_file 0\n"})
    assert read_ram(proc, cg, environ={}).source == "cgroup v2 /"


@pytest.mark.parametrize(
    ("environ", "limit"),
    [
        ({"SLURM_MEM_PER_NODE": "4096"}, 4 * GIB),
        ({"SLURM_MEM_PER_CPU": "1024", "SLURM_CPUS_ON_NODE": "3"}, 3 * GIB),
        ({"SLURM_MEM_PER_NODE": "0", "SLURM_MEM_PER_CPU": "512", "SLURM_CPUS_ON_NODE": "2"}, GIB),
    ],
)
def test_slurm_memory_variables(proc: Path, tmp_path: Path, environ: dict[str, str], limit: int) -> None:
    # The job's usage is this process tree: one process with 300 MiB anonymous and 12 MiB shared memory.
    _write(proc, {"self/status": f"RssAnon:\t{300 * 1024} kB\nRssFile:\t{900 * 1024} kB\nRssShmem:\t{12 * 1024} kB\n"})
    reading = read_ram(proc, tmp_path / "none", environ=environ)
    assert (reading.limit, reading.source) == (limit, "slurm")
    assert reading.used == 312 * MIB  # anonymous + shared memory; file-backed pages are not the job's to count


def test_a_cgroup_limit_smaller_than_slurms_wins(proc: Path, tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _write(proc, {"self/cgroup": "0::/job\n"})
    _write(cg, {"cgroup.controllers": "", "job/memory.max": f"{GIB}\n", "job/memory.current": "0\n"})
    assert read_ram(proc, cg, environ={"SLURM_MEM_PER_NODE": "2048"}).source == "cgroup v2 /job"


def test_process_tree_memory_counts_shared_pages_once(tmp_path: Path) -> None:
    # Prepare: 10 -> 11 -> 12, and an unrelated 20. Forked children share pages: PSS divides them.
    root = tmp_path / "proc"
    rollup = "Rss: {} kB\nPss: 999 kB\nPss_Anon: {} kB\nPss_File: 5000 kB\nPss_Shmem: {} kB\n"
    _write(root, {
        "10/stat": "10 (python) S 1 x", "11/stat": "11 (pt_data worker) S 10 x", "12/stat": "12 ((odd) name)) S 11 x",
        "20/stat": "20 (bash) S 1 x",
        "10/smaps_rollup": rollup.format(100_000, 1000, 10), "11/smaps_rollup": rollup.format(100_000, 200, 0),
        "12/smaps_rollup": rollup.format(100_000, 300, 0),
    })
    assert sorted(descendants(10, root)) == [11, 12]
    # Executing: the sum of the RSS would be 300,000 kB; the tree costs 1000 + 10 + 200 + 300 kB.
    assert process_memory(pid=10, proc_root=root) == 1510 * 1024
    assert process_memory(pid=11, proc_root=root) == 500 * 1024


def test_this_process_memory_grows_with_an_allocation_and_a_forked_child_adds_little() -> None:
    import torch

    base = process_memory()
    block = torch.ones(64 * MIB // 4)  # 64 MiB, written
    grown = process_memory()
    assert 60 * MIB < grown - base < 80 * MIB
    # A child of this process is found; it shares nothing with us, so it adds only its own small footprint.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in descendants(os.getpid())
        assert process_memory() - grown < 50 * MIB
    finally:
        child.kill()
        child.wait()
    del block


def test_reading_this_machine_gives_a_sane_fraction() -> None:
    reading = read_ram()
    assert 0 < reading.used < reading.limit
    assert 0 < reading.frac < 1


def test_descendants_from_task_children_files(tmp_path: Path) -> None:
    # Kernels with CONFIG_PROC_CHILDREN list each thread's children: no scan of every process needed.
    root = tmp_path / "proc"
    _write(root, {"10/task/10/children": "11 ", "10/task/13/children": "14\n", "11/task/11/children": "12",
                  "12/task/12/children": "", "14/task/14/children": ""})
    assert sorted(descendants(10, root)) == [11, 12, 14]


def test_ram_reader_finds_the_limit_once_and_reads_usage_every_time(proc: Path, tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    _write(proc, {"self/cgroup": "0::/job\n"})
    _write(cg, {"cgroup.controllers": "memory\n", "job/memory.max": f"{GIB}\n", "job/memory.current": f"{GIB // 4}\n"})
    reader = RamReader(refresh_s=3600, proc_root=proc, cgroup_root=cg, environ={})
    assert reader().frac == 0.25
    _write(cg, {"job/memory.current": f"{GIB // 2}\n", "job/memory.max": f"{2 * GIB}\n"})
    assert (reader().used, reader().limit) == (GIB // 2, GIB)  # the new usage, the limit found before
    assert read_ram(proc, cg, environ={}).limit == 2 * GIB  # an uncached reading sees the new limit

"""CPU time and memory of a receiver's process tree, read from /proc.

A receiver is one or more groups of root pids (dicomgw: its own process and the
embedded PostgreSQL, which pg_ctl detaches); a group is its roots and all their
descendants. CPU is utime+stime+cutime+cstime, so children that a member
already reaped (storescp --fork, PostgreSQL backends) still count. Memory is
the sum of PSS, so pages shared between processes (PostgreSQL's shared
buffers) count once; its peak is sampled every 50 ms.
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

Groups = dict[str, list[int]]  # group name -> root pids

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.05


def stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))):
            parents[int(entry.name)] = int(fields[1])
    return parents


def trees(groups: Groups) -> dict[str, set[int]]:
    """Each group's roots and their descendants (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, roots in groups.items():
        seen: set[int] = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo.extend(children.get(pid, ()))
        out[name] = seen
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    ticks = 0
    for pid in pids:
        if fields := stat_fields(pid):
            # fields[11:15]: utime stime cutime cstime (proc(5) fields 14-17)
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / CLK_TCK


def cpu_by_group(groups: Groups) -> dict[str, float]:
    return {name: cpu_seconds(pids) for name, pids in trees(groups).items()}


def machine_cpu() -> tuple[float, float, float]:
    """(busy CPU-s of the whole machine, of this process, of its reaped children).

    The harness's own sampling and the storescu senders (reaped children) are
    told apart from whatever else ran on the machine during a run.
    """
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    )
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        (user + nice + system + irq + softirq) / CLK_TCK,
        me.ru_utime + me.ru_stime,
        children.ru_utime + children.ru_stime,
    )


def pss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def wait_idle(
    groups: Groups, quiet_s: float = 0.5, busy_cpu_s: float = 0.02, timeout_s: float = 30.0
) -> None:
    """Wait until the tree used less than busy_cpu_s of CPU in the last quiet_s.

    Work a receiver finishes after its last C-STORE response (indexing, closing
    files, a forked child exiting) is part of its cost.
    """
    deadline = time.monotonic() + timeout_s
    last = sum(cpu_by_group(groups).values())
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = sum(cpu_by_group(groups).values())
        if now - last < busy_cpu_s:
            return
        last = now


class PeakMemory:
    """Samples each group's PSS every 50 ms in a thread; peaks in bytes."""

    def __init__(self, groups: Groups) -> None:
        self._groups = groups
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak: dict[str, int] = {}
        self.peak_total = 0

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            sample = {name: pss_bytes(pids) for name, pids in trees(self._groups).items()}
            for name, value in sample.items():
                self.peak[name] = max(self.peak.get(name, 0), value)
            self.peak_total = max(self.peak_total, sum(sample.values()))
            if self._stop.wait(SAMPLE_S):
                return


class Leftovers:
    """Work dirs of good runs, removed when the benchmark ends instead of between runs.

    NOTE: ext4 without a journal (the root of the 2-core VMs here) skips an inode
    freed in the last 60 s when it allocates one, reading the inode table for
    each it skips (recently_deleted(), found with perf). Removing a run's
    thousands of files just before the next run made every file that run
    created cost ~1 ms of CPU more (dicomgw's MR rate fell from 360 to 224
    instances/s), whichever receiver came next.
    """

    def __init__(self) -> None:
        self._dirs: list[Path] = []
        atexit.register(self.remove)

    def add(self, workdir: Path) -> None:
        self._dirs.append(workdir)

    def remove(self) -> None:
        for workdir in self._dirs:
            shutil.rmtree(workdir, ignore_errors=True)
        self._dirs.clear()


LEFTOVERS = Leftovers()

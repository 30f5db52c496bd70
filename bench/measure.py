"""Run one command: its wall time, and the peak memory of its process tree.

Memory is what the tree itself holds: anonymous memory (the heaps and buffers of the programs)
and tmpfs/shared memory, sampled every 50 ms. The page cache of the files the tree reads and
writes is the kernel's, reclaimable at any time, and is left out; the database servers are not in
the tree. Where this process may create a child memory cgroup (cgroup v1 as root), each run gets
its own, whose ``memory.stat`` gives exact sums for the whole tree, forks included (and whose
``memory.max_usage_in_bytes``, page cache included, is kept too); elsewhere the RSS
(``RssAnon + RssShmem``) of the processes below the command is summed from /proc, leaving out any
redis-server or postgres that the tree starts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.05
CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
# Servers a run may start that are not the backup's own work (a restore's temporary Redis).
NOT_OURS = ("redis-server", "postgres")
# The wrapper that puts the command into its cgroup before it starts: sh PROCS COMMAND...
_ENTER_CGROUP = 'echo "$$" >"$1" && shift && exec "$@"'


@dataclass(frozen=True)
class Run:
    """How one run went."""

    seconds: float
    cpu_seconds: float  # user + system of the command and the children it waited for
    returncode: int
    stderr: str
    peak_bytes: int  # anonymous + tmpfs memory of the tree, sampled
    cgroup_max_bytes: int | None  # the cgroup's own maximum, page cache included (cgroup only)


class Probe:
    """Where memory is read: a child cgroup per run, or /proc."""

    def __init__(self) -> None:
        self.parent = _writable_memory_cgroup()
        self._names = itertools.count()

    @property
    def method(self) -> str:
        if self.parent is not None:
            return "cgroup v1 (memory.stat rss + shmem of a child cgroup per run, every 50 ms)"
        return "/proc (RssAnon + RssShmem summed over the process tree, every 50 ms)"

    def new_group(self) -> Path | None:
        if self.parent is None:
            return None
        group = self.parent / f"gym-bench-{os.getpid()}-{next(self._names)}"
        group.mkdir()
        return group


def _writable_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory folder, when a child can be made in it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" not in controllers.split(","):
            continue
        base = CGROUP_V1_MEMORY / path.lstrip("/")
        try:
            probe = Path(tempfile.mkdtemp(prefix="gym-bench-probe-", dir=base))
        except OSError:
            return None
        probe.rmdir()
        return base if (base / "memory.stat").is_file() else None
    return None


def _cgroup_memory(group: Path) -> int:
    stat = dict(
        line.split(" ", 1) for line in (group / "memory.stat").read_text().splitlines() if line
    )
    return int(stat.get("total_rss", stat.get("rss", "0"))) + int(
        stat.get("total_shmem", stat.get("shmem", "0"))
    )


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree_memory(root: int) -> int:
    children = _children()
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Name", "").strip().startswith(NOT_OURS):
            continue
        for name in ("RssAnon", "RssShmem"):
            if name in fields:
                total += int(fields[name].split()[0]) * 1024
    return total


class _Sampler(threading.Thread):
    def __init__(self, read: Callable[[], int]) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.peak = 0
        self.halt = threading.Event()

    def sample(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.peak = max(self.peak, self.read())

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(SAMPLE_SECONDS)


def run(argv: Sequence[str], env: Mapping[str, str], probe: Probe, cwd: Path | None = None) -> Run:
    """Run ``argv`` (stdout discarded) and measure it."""
    group = probe.new_group()
    command = list(argv)
    if group is not None:
        command = ["sh", "-c", _ENTER_CGROUP, "sh", str(group / "cgroup.procs"), *command]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        sampler = _Sampler(
            (lambda: _cgroup_memory(group)) if group is not None else lambda: _tree_memory(proc.pid)
        )
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        returncode = proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.halt.set()
        sampler.join()
        cgroup_max = None
        if group is not None:
            sampler.sample()
            cgroup_max = int((group / "memory.max_usage_in_bytes").read_text())
            _remove_group(group)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Run(
        seconds, usage.ru_utime + usage.ru_stime, returncode, stderr, sampler.peak, cgroup_max
    )


def _remove_group(group: Path) -> None:
    """Remove the run's cgroup; a process still in it (a daemon the run left) goes to the parent."""
    for _ in range(20):
        try:
            group.rmdir()
        except OSError:
            time.sleep(0.05)
        else:
            return
    for pid in (group / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            (group.parent / "cgroup.procs").write_text(pid)
    group.rmdir()

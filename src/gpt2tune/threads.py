"""CPU threads for PyTorch: how many to use (one per physical core that other processes are not keeping busy,
unless --threads or OMP_NUM_THREADS says), and one fewer while a thread of ours needs a core.

Importing this module does not import torch: the CLI chooses threads before any heavy library is loaded.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator

from gpt2tune.errors import UserError

# more threads than this only slows PyTorch down, and tens of thousands crash it ("can't start new thread", then
# a segfault in OpenMP); 64 at least, so a run's config.yaml from a bigger machine still resumes here
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads PyTorch runs, and why."""

    threads: int
    reason: str

    def __str__(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.reason})"


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Cores this process may use: hyper-thread siblings count once (PyTorch's own default), capped by a
    container's CPU quota."""
    cpus = usable_cpus()
    cores = set()
    for c in cpus:
        topology = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(topology + "physical_package_id") as pkg, open(topology + "core_id") as core:
                cores.add((pkg.read().strip(), core.read().strip()))
        except OSError:
            cores = set(cpus)
            break
    quota = cpu_quota()
    return max(1, min(len(cores) or len(cpus), math.ceil(quota) if quota else len(cpus)))


def cpu_quota() -> float | None:
    """CPUs' worth of time a cgroup (a container's --cpus) allows this process, or None when unlimited."""
    for path, period_path in (("/sys/fs/cgroup/cpu.max", None),
                              ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            with open(path) as f:
                fields = f.read().split()
            if period_path:
                with open(period_path) as f:
                    fields.append(f.read().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    return None


def _busy_jiffies(cpus: list[int]) -> int | None:
    """Time the given CPUs spent not idle since boot, in clock ticks (Linux's /proc/stat), or None."""
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name in wanted:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
                    total += user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return None
    return total


_BUSY_CACHE: list[tuple[float, float]] = []  # (when, busy): one measurement serves a process for a while
_BUSY_START: list[tuple[int, float, float]] = []  # (busy jiffies, own CPU s, when): begin_busy_window()


def begin_busy_window() -> None:
    """Start measuring the others' load now (a long job's start, before its imports): busy_cores() then reads
    the window from here instead of sleeping through one of its own (0.25 s of every train's start)."""
    before = _busy_jiffies(usable_cpus())
    if before is not None:
        _BUSY_START[:] = [(before, _own_cpu_seconds(), time.monotonic())]


def busy_cores(window: float = 0.25) -> float:
    """CPUs' worth of work that other processes are doing right now on this process's CPUs.

    Measured over `window` seconds from /proc/stat minus this process's own CPU time, so it counts only
    others, and only now: the load average would still count a command that finished a minute ago. A window
    begun by begin_busy_window() less than 30 s ago (the seconds the libraries took to import) is the one
    measured, waited on only for what it lacks of `window`. Elsewhere, the 1-minute load average.
    """
    if _BUSY_CACHE and time.monotonic() - _BUSY_CACHE[0][0] < 30:
        return _BUSY_CACHE[0][1]
    cpus = usable_cpus()
    start = _BUSY_START.pop() if _BUSY_START else None
    if start is not None and time.monotonic() - start[2] < 30:
        before, own_before, t0 = start
    else:
        before, own_before, t0 = _busy_jiffies(cpus), _own_cpu_seconds(), time.monotonic()
    if before is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
    else:
        left = window - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
        after, own_after, t1 = _busy_jiffies(cpus), _own_cpu_seconds(), time.monotonic()
        others = (after - before) / os.sysconf("SC_CLK_TCK") - (own_after - own_before)
        busy = max(0.0, others / (t1 - t0))
    _BUSY_CACHE[:] = [(time.monotonic(), busy)]
    return busy


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """--threads when given; else OMP_NUM_THREADS when set; else auto: one per physical core that other
    processes are not keeping busy right now.

    On a shared machine, intra-op threads that wait at every barrier for a core another process holds
    make each small op cost a scheduler time slice: measured under load on 2 cores, one thread trained
    2.6x faster, sampled 4x faster and served a 2 x 2 sample request 10x faster than two.
    """
    if requested:
        return ThreadChoice(requested, "--threads")
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) >= 1:
        if int(omp) > MAX_THREADS:
            raise UserError(f"OMP_NUM_THREADS={omp[:20]} is more threads than this machine can use (at most "
                            f"{MAX_THREADS}: 4 per CPU here, 64 at least); set it lower, or unset it")
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    cores, busy = physical_cores(), busy_cores()
    threads = max(1, min(cores, round(cores - busy)))
    return ThreadChoice(threads, f"auto: {cores} core{'s' if cores != 1 else ''}, "
                                 f"{busy:.1f} busy with other processes")


def use_threads(requested: int | None = None, announce: bool = True) -> ThreadChoice:
    """Choose the thread count (choose_threads), apply it to PyTorch, and say so on stderr."""
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    try:
        # inter-op threads only run torch.jit.fork-style tasks; fewer is harmless and can be set only once
        torch.set_num_interop_threads(choice.threads)
    except RuntimeError:
        pass
    if announce:
        print(f"gpt2tune: {choice}", file=sys.stderr, flush=True)
    return choice


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads (None = auto) without announcing it; returns the number set."""
    return use_threads(threads, announce=False).threads


@contextlib.contextmanager
def one_core_less(device_type: str, when: bool = True) -> Iterator[None]:
    """While active, PyTorch computes on one thread fewer (CPU only, at least one): a core left to other work
    (a thread writing a checkpoint), which would otherwise stall every parallel op at its barrier."""
    import torch

    threads = torch.get_num_threads()
    if not when or device_type != "cpu" or threads < 2:
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

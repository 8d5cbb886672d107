"""The machine: how many CPU threads to use, which precision it runs natively, its measured matmul peak.

Importing this module does not import torch: the CLI chooses threads before any heavy library is loaded.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from gpt2tune.errors import UserError

if TYPE_CHECKING:
    import torch


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


def total_memory() -> int | None:
    """Bytes of memory this process can have: the machine's, or a cgroup's (a container's --memory) when lower;
    None when unknown."""
    try:
        limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limits.append(int(f.read().strip()))
        except (OSError, ValueError):  # no such file, or "max"
            continue
    return min((x for x in limits if x > 0), default=None)


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


# ------------------------------------------------------------------------------------------------- the device

DEVICES = ("auto", "cuda", "mps", "xpu", "cpu")
DEVICE_HELP = ("auto|cuda|mps|xpu|cpu: where the model runs (auto = what Accelerate picks: Apple MPS, else CUDA or "
               "ROCm, else Intel XPU, else the CPU)")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def device_available(kind: str) -> bool:
    """Whether this machine (and this PyTorch build) has an accelerator of that kind; the CPU always."""
    import torch

    if kind == "cuda":  # ROCm builds of PyTorch answer as CUDA
        return torch.cuda.is_available()
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps and mps.is_available())
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return bool(xpu and xpu.is_available())
    return kind == "cpu"


def choose_device(requested: str = "auto") -> str:
    """The device a command runs on: --device when given (a UserError when absent), else Accelerate's order."""
    if requested not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested != "auto":
        if not device_available(requested):
            raise UserError(f"--device {requested}: this machine has no {DEVICE_NAMES[requested]} that PyTorch can "
                            f"use (available: {', '.join(available_devices())})")
        return requested
    return available_devices()[0]


DEVICE_NAMES = {"cuda": "CUDA/ROCm GPU", "mps": "Apple MPS GPU", "xpu": "Intel XPU", "cpu": "CPU"}


def available_devices() -> list[str]:
    """The devices here, in the order Accelerate prefers them (its PartialState.default_device); the CPU last."""
    return [kind for kind in ("mps", "cuda", "xpu", "cpu") if device_available(kind)]


def _autocast_works(kind: str, dtype: torch.dtype) -> bool:
    """Whether torch.autocast runs dtype on this device kind: on GPUs bf16 where the GPU has it; on a CPU and
    MPS as torch.autocast itself says (it warns and switches itself off for a dtype it cannot run there, e.g.
    bf16 on MPS before macOS 14; before PyTorch 2.5 MPS had no autocast at all)."""
    import warnings

    import torch

    if not torch.amp.is_autocast_available(kind):
        return False
    if kind in ("cuda", "xpu"):
        return dtype != torch.bfloat16 or _bf16_supported(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.autocast(kind, dtype=dtype)
    return not any("autocast" in str(w.message).lower() for w in caught)


def _bf16_supported(kind: str) -> bool:
    """Whether the device computes bf16: natively on a CPU (its flags), per the backend on a GPU."""
    import torch

    if kind == "cpu":
        return cpu_has_bf16()
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "xpu":
        return bool(getattr(torch.xpu, "is_bf16_supported", lambda: False)())
    return _autocast_works(kind, torch.bfloat16)  # MPS: where its autocast takes bf16


def precision_for(precision: str, device: str) -> str:
    """auto|fp32|bf16|fp16 on a device kind -> bf16, fp16 or fp32: what the run computes in.

    auto: bf16 where the device supports it; else fp16 (with a GradScaler) on a GPU whose autocast has it; else
    fp32 (a CPU without native bf16, MPS where autocast can't). An explicit bf16/fp16 must be one autocast runs
    there (on a CPU both run, emulated where not native: fp16 + GradScaler on a CPU is the GPU path, testable).
    """
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        if _bf16_supported(device) and _autocast_works(device, torch.bfloat16):
            return "bf16"
        if device != "cpu" and _autocast_works(device, torch.float16):
            return "fp16"
        return "fp32"
    if not _autocast_works(device, torch.bfloat16 if precision == "bf16" else torch.float16):
        raise UserError(f"--precision {precision}: PyTorch cannot autocast to {precision} on the "
                        f"{DEVICE_NAMES.get(device, device)} here; use --precision auto or fp32")
    return precision


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for precision (auto|fp32|bf16|fp16) on device; None = run in fp32."""
    import torch

    kind = device if isinstance(device, str) else device.type
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_for(precision, kind))


def grad_scaler(dtype: torch.dtype | None, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (whose small gradients would underflow unscaled); None for bf16 and fp32."""
    import torch

    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device if isinstance(device, str) else device.type)


def device_line(device: str, precision: str) -> str:
    """The device and what the run computes in, for a command's first lines."""
    import torch

    name = DEVICE_NAMES.get(device, device)
    if device == "cuda":
        name = f"{name}: {torch.cuda.get_device_name()}"
    elif device == "xpu":
        name = f"{name}: {torch.xpu.get_device_name()}"
    return f"device {device} ({name}), precision {precision_for(precision, device)}"


def to_device(model, requested: str = "auto"):
    """Move a model to the chosen device (generate, evaluate, serve, export all go through here); the device."""
    import torch

    device = torch.device(choose_device(requested))
    model.to(device)
    return device


def sync(device: str) -> None:
    """Wait for the device's queued work (no-op on a CPU)."""
    import torch

    module = {"cuda": torch.cuda, "mps": getattr(torch, "mps", None), "xpu": getattr(torch, "xpu", None)}.get(device)
    if module is not None and device_available(device):
        module.synchronize()


def device_rng_state() -> dict[str, Any]:
    """The random streams of the accelerators in use (for a checkpoint), by device kind."""
    import torch

    state: dict[str, Any] = {}
    if device_available("cuda"):
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device_available("xpu"):
        state["xpu"] = torch.xpu.get_rng_state_all()
    if device_available("mps"):
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_device_rng_state(state: dict[str, Any]) -> None:
    """Put back what device_rng_state() captured, for the devices this machine has."""
    import torch

    setters = {"cuda": lambda s: torch.cuda.set_rng_state_all(s), "xpu": lambda s: torch.xpu.set_rng_state_all(s),
               "mps": lambda s: torch.mps.set_rng_state(s)}
    for kind, value in state.items():
        if kind in setters and device_available(kind):
            setters[kind](value)


def matmul_peak(dtype: torch.dtype, device: str, seconds: float = 1.0) -> float:
    """Measured FLOP/s of large square torch.matmul in dtype (best of repeated runs)."""
    import torch

    size = 2048 if device == "cpu" else 8192
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best, spent = math.inf, 0.0
    while spent < seconds or best == math.inf:
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 2.0 * size ** 3 / best


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86: native bf16 dot products (Cooper Lake, Sapphire Rapids, Zen 4+)


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively (an x86 bf16 instruction set, or Arm's BF16), from the flags the
    operating system reports (Linux /proc/cpuinfo; macOS sysctl); elsewhere, or unreadable, False: fp32."""
    if cpuinfo is None:
        cpuinfo = _cpu_flags()
    flags = set(cpuinfo.lower().split())
    return bool(flags & set(BF16_CPU_FLAGS)) or "bf16" in flags or "feat_bf16:1" in flags


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                return next((line.split(":", 1)[1] for line in f
                             if line.startswith(("flags", "Features")) and ":" in line), "")
        except OSError:
            return ""
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
        return "feat_bf16:1" if out == "1" else ""
    return ""

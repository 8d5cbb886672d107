"""The machine: how many CPU threads to use, which precision it runs natively, its measured matmul peak."""

from __future__ import annotations

import ctypes.util
import functools
import math
import os
import sys
import time

import torch

from .errors import UserError

_DEFAULT_THREADS = torch.get_num_threads()  # PyTorch's choice at import: one per physical core


def auto_threads() -> int:
    """Threads for PyTorch: one per physical core that other processes are not already keeping busy.

    On a shared machine, intra-op threads that wait at every barrier for a core another process holds
    make each small op cost a scheduler time slice: measured here under load 8 on 2 cores, 1 thread
    trained 2.6x faster and sampled 4x faster than 2. OMP_NUM_THREADS, when set, wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return _DEFAULT_THREADS
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return _DEFAULT_THREADS
    return max(1, min(_DEFAULT_THREADS, _DEFAULT_THREADS - int(busy + 0.5)))


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads (None = auto_threads()); returns the number set."""
    n = threads or auto_threads()
    torch.set_num_threads(n)
    return n


def sync(device: str) -> None:
    """Wait for queued GPU work (no-op on a CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str, seconds: float = 1.0) -> float:
    """Measured FLOP/s of large square torch.matmul in dtype (best of repeated runs)."""
    size = 8192 if device == "cuda" else 2048
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


def resolve_precision(precision: str, cpu: bool) -> str:
    """auto -> bf16 where the hardware runs it natively, else fp16 on GPUs, else fp32 (Accelerate names)."""
    if precision == "fp32":
        return "no"
    if precision == "auto":
        if cpu or not torch.cuda.is_available():
            return "bf16" if cpu_has_bf16() else "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and (cpu or not torch.cuda.is_available()):
        raise UserError("fp16 needs a GPU; on a CPU use --precision bf16 or fp32")
    return precision


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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for precision (auto|fp32|bf16|fp16) on device; None = run in fp32."""
    mode = resolve_precision(precision, device.type != "cuda")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)


TCMALLOC_ENV = "GPT2TUNE_TCMALLOC"  # 0 = keep the system's malloc


def tcmalloc_library() -> str | None:
    """The system's tcmalloc (gperftools; Debian/Ubuntu: libtcmalloc-minimal4), or None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def allocator() -> str:
    """The malloc this process runs on: 'tcmalloc' or 'glibc malloc'."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            return "tcmalloc" if "tcmalloc" in f.read() else "glibc malloc"
    except OSError:
        return "system malloc"


def rerun_with_tcmalloc(args: list[str]) -> None:
    """Replace this process by the same gpt2tune command with tcmalloc preloaded, when the system has it.

    PyTorch on a CPU frees and allocates tensors of a few MB thousands of times per step; glibc's malloc keeps
    much of that freed memory resident and re-faults the rest, tcmalloc reuses it. Measured on GPT-2 124M here:
    6 % faster steps and 0.25-0.4 GiB less peak RSS. Returns (does nothing) when it is off, absent or loaded.
    """
    if not sys.platform.startswith("linux"):  # LD_PRELOAD is how Linux's loader takes it
        return
    if os.environ.get(TCMALLOC_ENV, "1").lower() in ("0", "no", "off", "false"):
        return
    if "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    lib = tcmalloc_library()
    if lib is None:
        return
    env = {**os.environ, "LD_PRELOAD": ":".join(filter(None, [lib, os.environ.get("LD_PRELOAD")]))}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "gpt2tune", *args], env)

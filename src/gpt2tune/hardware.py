"""The machine: how many CPU threads to use, and its measured matmul peak."""

from __future__ import annotations

import math
import os
import time

import torch

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

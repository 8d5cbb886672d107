"""The machine: its memory, the device a command runs on, the precision that device computes natively, and its
measured matmul peak. (How many CPU threads PyTorch uses: threads.py.)

Importing this module does not import torch: the CLI reads its device and precision names before any heavy
library is loaded.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from gpt2tune.errors import UserError

if TYPE_CHECKING:
    import torch


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

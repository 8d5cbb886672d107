"""hardware.py: devices and precision choice (threads: test_threads.py)."""


import pytest
import torch

from gpt2tune import hardware
from gpt2tune.errors import UserError


@pytest.mark.parametrize("flags, native", [
    ("fpu sse4_2 avx2 avx512f avx512bw avx512vl", False),  # AVX-512 without bf16 instructions: fp32
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),  # Cooper Lake, Zen 4
    ("fpu avx512f amx_bf16 amx_tile", True),  # Sapphire Rapids
    ("fp asimd sve bf16 i8mm", True),  # Arm with BF16 (/proc/cpuinfo Features)
    ("fp asimd", False),
    ("", False),
])
def test_cpu_bf16_comes_from_the_cpu_flags(flags, native):
    assert hardware.cpu_has_bf16(flags) is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_a_cpu_follows_its_flags(monkeypatch, native):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: native)
    assert hardware.precision_for("auto", "cpu") == ("bf16" if native else "fp32")
    assert hardware.autocast_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if native else None)
    assert hardware.precision_for("fp32", "cpu") == "fp32"
    assert hardware.precision_for("bf16", "cpu") == "bf16"  # asked for: given, native or not
    assert hardware.precision_for("fp16", "cpu") == "fp16"  # the GPU path (fp16 + GradScaler), runnable on a CPU
    with pytest.raises(UserError, match="precision must be one of"):
        hardware.precision_for("fp8", "cpu")


# ---------------------------------------------------------------- the device: each accelerator faked present

@pytest.fixture
def machine(monkeypatch):
    """Fake which accelerators PyTorch reports (and what they compute in); returns a setter."""
    def have(cuda=False, mps=False, xpu=False, bf16=True, cpu_bf16=False, mps_autocast=True, mps_bf16=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.xpu, "is_available", lambda: xpu)
        monkeypatch.setattr(torch.xpu, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: cpu_bf16)
        real_available, real_autocast = torch.amp.is_autocast_available, torch.autocast
        monkeypatch.setattr(torch.amp, "is_autocast_available",
                            lambda kind: mps_autocast if kind == "mps" else real_available(kind))

        class Autocast(real_autocast):  # PyTorch < 2.6 on macOS < 14: MPS autocast warns and switches off for bf16
            def __init__(self, kind, dtype=None, **kw):
                if kind == "mps" and dtype == torch.bfloat16 and not mps_bf16:
                    import warnings
                    warnings.warn("In MPS autocast, but the target dtype is not supported. Disabling autocast.")
                    kw["enabled"] = False
                super().__init__(kind, dtype=dtype, **kw)

        monkeypatch.setattr(torch, "autocast", Autocast)
    return have


@pytest.mark.parametrize("present, chosen", [
    (dict(cuda=True), "cuda"),
    (dict(mps=True), "mps"),
    (dict(xpu=True), "xpu"),
    (dict(), "cpu"),
    (dict(cuda=True, xpu=True), "cuda"),  # Accelerate's order: MPS, CUDA, XPU, CPU
])
def test_auto_picks_the_device_accelerate_would(machine, present, chosen):
    machine(**present)
    assert hardware.choose_device("auto") == chosen
    assert hardware.available_devices()[-1] == "cpu"
    assert hardware.choose_device("cpu") == "cpu"  # the CPU can always be asked for


def test_accelerate_agrees_with_the_choice(machine):
    from accelerate.state import PartialState

    machine()
    assert PartialState().default_device.type == hardware.choose_device("auto") == "cpu"


@pytest.mark.parametrize("asked", ["cuda", "mps", "xpu"])
def test_a_device_that_is_absent_is_one_clear_error(machine, asked):
    machine()
    with pytest.raises(UserError, match=f"--device {asked}: this machine has no .* \\(available: cpu\\)"):
        hardware.choose_device(asked)
    with pytest.raises(UserError, match="device must be one of"):
        hardware.choose_device("tpu")


# the precision table: (device, what the machine has) -> what --precision auto computes in
@pytest.mark.parametrize("device, present, auto", [
    ("cuda", dict(cuda=True, bf16=True), "bf16"),  # Ampere and later
    ("cuda", dict(cuda=True, bf16=False), "fp16"),  # Volta, Turing: fp16 with a GradScaler
    ("xpu", dict(xpu=True, bf16=True), "bf16"),
    ("xpu", dict(xpu=True, bf16=False), "fp16"),
    ("mps", dict(mps=True), "bf16"),  # autocast takes bf16 on MPS (macOS 14+)
    ("mps", dict(mps=True, mps_bf16=False), "fp16"),  # it takes fp16 only
    ("mps", dict(mps=True, mps_autocast=False), "fp32"),  # PyTorch without MPS autocast
    ("cpu", dict(cpu_bf16=True), "bf16"),  # AVX512-BF16, AMX, Arm BF16
    ("cpu", dict(cpu_bf16=False), "fp32"),
])
def test_precision_auto_per_device(machine, device, present, auto):
    machine(**present)
    assert hardware.choose_device("auto") == device
    assert hardware.precision_for("auto", device) == auto
    dtype = hardware.autocast_dtype("auto", torch.device(device))
    assert dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[auto]
    scaler = hardware.grad_scaler(dtype, "cpu")  # (built for the CPU here: no GPU to build it for)
    assert (scaler is not None) == (auto == "fp16")
    assert hardware.precision_for("fp32", device) == "fp32"


def test_an_explicit_precision_the_device_cannot_run_is_one_clear_error(machine):
    machine(cuda=True, bf16=False)
    with pytest.raises(UserError, match="cannot autocast to bf16 on the CUDA/ROCm GPU"):
        hardware.precision_for("bf16", "cuda")
    assert hardware.precision_for("fp16", "cuda") == "fp16"
    machine(mps=True, mps_autocast=False)
    with pytest.raises(UserError, match="cannot autocast to fp16 on the Apple MPS GPU"):
        hardware.precision_for("fp16", "mps")


def test_one_core_less_leaves_a_core_while_active():
    import torch

    from gpt2tune.threads import one_core_less

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_core_less("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with one_core_less("cpu", when=False):
            assert torch.get_num_threads() == 2
        with one_core_less("cuda"):
            assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        with one_core_less("cpu"):
            assert torch.get_num_threads() == 1  # never none
    finally:
        torch.set_num_threads(before)

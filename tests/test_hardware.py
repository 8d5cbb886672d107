"""hardware.py: precision choice and the tcmalloc re-run."""

import os
import subprocess
import sys

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
def test_auto_precision_follows_the_hardware(monkeypatch, native):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: native)
    assert hardware.resolve_precision("auto", cpu=True) == ("bf16" if native else "no")
    assert hardware.autocast_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if native else None)
    assert hardware.resolve_precision("fp32", cpu=True) == "no"
    assert hardware.resolve_precision("bf16", cpu=True) == "bf16"  # asked for: given, native or not
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        hardware.resolve_precision("fp16", cpu=True)


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((path, args, env)))
    monkeypatch.delenv(hardware.TCMALLOC_ENV, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    monkeypatch.setattr(hardware, "tcmalloc_library", lambda: "libtcmalloc_minimal.so.4")
    return calls


def test_reruns_the_same_command_with_tcmalloc_first(execs):
    hardware.rerun_with_tcmalloc(["train", "--data", "x.txt"])
    [(path, args, env)] = execs
    assert path == sys.executable and args == hardware.rerun_argv(["train", "--data", "x.txt"])
    assert args[-3:] == ["train", "--data", "x.txt"]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:/opt/other.so"  # the user's own preload kept


@pytest.mark.parametrize("setting", ["off", "0"])
def test_no_rerun_when_switched_off_absent_or_loaded(execs, monkeypatch, setting):
    monkeypatch.setenv(hardware.TCMALLOC_ENV, setting)
    hardware.rerun_with_tcmalloc(["train"])
    monkeypatch.delenv(hardware.TCMALLOC_ENV)
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    hardware.rerun_with_tcmalloc(["train"])  # already loaded: no loop
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(hardware, "tcmalloc_library", lambda: None)
    hardware.rerun_with_tcmalloc(["train"])
    assert execs == []


@pytest.mark.skipif(hardware.tcmalloc_library() is None, reason="tcmalloc is not installed here")
def test_bench_runs_on_tcmalloc_when_installed():
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", hardware.TCMALLOC_ENV)}
    code = "from gpt2tune.hardware import allocator; print(allocator())"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert plain.stdout.strip() == "glibc malloc"
    args = ["bench", "--shapes", "tiny", "--steps", "1", "--sentences", "200", "--no-generation", "--no-isolate",
            "--threads", "1", "--json"]
    done = subprocess.run([sys.executable, "-m", "gpt2tune", *args], capture_output=True, text=True, env=env,
                          check=True)
    assert json.loads(done.stdout)["allocator"] == "tcmalloc"
    off = subprocess.run([sys.executable, "-m", "gpt2tune", *args], capture_output=True, text=True,
                         env={**env, hardware.TCMALLOC_ENV: "0"}, check=True)
    assert json.loads(off.stdout)["allocator"] == "glibc malloc"

"""process.py: the tcmalloc re-run of a long job, and which malloc a process runs on."""

import os
import subprocess
import sys

import pytest

from gpt2tune import process


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((path, args, env)))
    monkeypatch.delenv(process.TCMALLOC_ENV, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    monkeypatch.setattr(process, "tcmalloc_library", lambda: "libtcmalloc_minimal.so.4")
    return calls


def test_reruns_the_same_command_with_tcmalloc_first(execs):
    process.rerun_with_tcmalloc(["train", "--data", "x.txt"])
    [(path, args, env)] = execs
    assert path == sys.executable and args == process.rerun_argv(["train", "--data", "x.txt"])
    assert args[-3:] == ["train", "--data", "x.txt"]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:/opt/other.so"  # the user's own preload kept


@pytest.mark.parametrize("setting", ["off", "0"])
def test_no_rerun_when_switched_off_absent_or_loaded(execs, monkeypatch, setting):
    monkeypatch.setenv(process.TCMALLOC_ENV, setting)
    process.rerun_with_tcmalloc(["train"])
    monkeypatch.delenv(process.TCMALLOC_ENV)
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    process.rerun_with_tcmalloc(["train"])  # already loaded: no loop
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(process, "tcmalloc_library", lambda: None)
    process.rerun_with_tcmalloc(["train"])
    assert execs == []


@pytest.mark.skipif(process.tcmalloc_library() is None, reason="tcmalloc is not installed here")
def test_bench_runs_on_tcmalloc_when_installed():
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", process.TCMALLOC_ENV)}
    code = "from gpt2tune.process import allocator; print(allocator())"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert plain.stdout.strip() == "glibc malloc"
    args = ["bench", "--shapes", "tiny", "--steps", "1", "--sentences", "200", "--no-generation", "--no-isolate",
            "--threads", "1", "--json"]
    done = subprocess.run([sys.executable, "-m", "gpt2tune", *args], capture_output=True, text=True, env=env,
                          check=True)
    assert json.loads(done.stdout)["allocator"] == "tcmalloc"
    off = subprocess.run([sys.executable, "-m", "gpt2tune", *args], capture_output=True, text=True,
                         env={**env, process.TCMALLOC_ENV: "0"}, check=True)
    assert json.loads(off.stdout)["allocator"] == "glibc malloc"

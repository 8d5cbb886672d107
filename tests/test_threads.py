"""One thread policy: --threads on every command, auto that leaves busy cores alone, same threads + seed = same
samples."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import make_corpus

from gpt2tune import threads as cpu_threads
from gpt2tune.cli import main
from gpt2tune.evaluate import generate as generating
from gpt2tune.evaluate import run as evaluate
from gpt2tune.model import sample as sampling


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def machine(monkeypatch):
    """A pretend 4-core machine whose busy cores the test sets."""
    state = {"busy": 0.0}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "physical_cores", lambda: 4)
    monkeypatch.setattr(cpu_threads, "busy_cores", lambda: state["busy"])
    return state


@pytest.mark.parametrize("busy, threads", [(0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (3.0, 1), (9.0, 1)])
def test_auto_leaves_the_cores_other_processes_keep_busy(machine, busy, threads):
    machine["busy"] = busy
    choice = cpu_threads.choose_threads(None)
    assert choice.threads == threads
    assert str(choice).startswith(f"{threads} thread") and f"{busy:.1f} busy" in str(choice)


def test_threads_flag_and_omp_win_over_auto(machine, monkeypatch):
    machine["busy"] = 3.0
    assert cpu_threads.choose_threads(3) == cpu_threads.ThreadChoice(3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads.choose_threads(None) == cpu_threads.ThreadChoice(2, "OMP_NUM_THREADS")
    assert cpu_threads.choose_threads(4).threads == 4


def test_busy_cores_sees_a_busy_process():
    cpu_threads._BUSY_CACHE.clear()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        # its own CPU time is not counted: this process spins too while measuring
        stop = threading.Event()
        mine = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
        mine.start()
        busy = cpu_threads.busy_cores(window=0.5)
        stop.set()
        mine.join()
    finally:
        spinner.kill()
        spinner.wait()
        cpu_threads._BUSY_CACHE.clear()
    assert busy >= 0.5  # the spinner (and whatever else runs here), never less


def test_busy_window_begun_at_the_start_is_read_without_a_wait(monkeypatch):
    """A long job begins the window before its imports: the seconds they take are the measurement."""
    cpu_threads._BUSY_CACHE.clear()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cpu_threads.begin_busy_window()
        time.sleep(0.6)  # the imports
        slept: list[float] = []
        monkeypatch.setattr(cpu_threads.time, "sleep", slept.append)
        busy = cpu_threads.busy_cores(window=0.25)
    finally:
        spinner.kill()
        spinner.wait()
        cpu_threads._BUSY_CACHE.clear()
    assert slept == [] and busy >= 0.5
    assert not cpu_threads._BUSY_START  # used once


def test_busy_window_too_short_waits_only_the_rest(monkeypatch):
    cpu_threads._BUSY_CACHE.clear()
    slept: list[float] = []
    cpu_threads.begin_busy_window()
    time.sleep(1.0)
    monkeypatch.setattr(cpu_threads.time, "sleep", slept.append)
    try:
        cpu_threads.busy_cores(window=5.0)
    finally:
        cpu_threads._BUSY_CACHE.clear()
    assert len(slept) == 1 and 3.0 < slept[0] <= 4.0


def test_threads_apply_to_threads_started_later():
    """serve runs the models on a worker thread started after the choice: it must inherit it."""
    cpu_threads.use_threads(1, announce=False)
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [1]


class Seen(Exception):
    """Raised by a spy once it has seen what it came for."""


def _spy(monkeypatch, module, name, seen, stop=False):
    """Wrap module.name so each call records torch's thread count at that moment."""
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        if stop:
            raise Seen()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


@pytest.mark.parametrize("threads", [1, 2])
def test_generate_evaluate_compare_honour_threads(threads, tiny_model, tmp_path, monkeypatch, capsys):
    seen: list[int] = []
    _spy(monkeypatch, generating, "sample", seen)  # generate samples here
    _spy(monkeypatch, sampling, "sample", seen)  # compare samples here
    _spy(monkeypatch, evaluate, "perplexity", seen)
    held = tmp_path / "held.txt"
    held.write_text("\n".join(make_corpus(12)) + "\n", encoding="utf-8")
    t = ["--threads", str(threads)]
    assert main(["generate", str(tiny_model), "Osaka", "--max-new-tokens", "3", *t]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"gpt2tune: {threads} thread{'s' if threads > 1 else ''} (--threads)"
    assert main(["evaluate", str(tiny_model), "--data", str(held), "--json", *t]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == threads  # recorded in the result
    assert main(["compare", "--base", str(tiny_model), "--tuned", str(tiny_model), "--data", str(held),
                 "--out", str(tmp_path / "cmp"), "--keywords", "Kyoto", "--samples", "1", "--max-new-tokens", "3",
                 *t]) == 0
    assert seen == [threads] * 6  # generate: sample; evaluate: perplexity; compare: 2 x (perplexity, sample)
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["settings"]["threads"] == threads


def test_serve_train_bench_honour_threads(tiny_model, tmp_path, monkeypatch):
    import uvicorn

    from gpt2tune import bench
    from gpt2tune.model import load as modeling

    seen: list[int] = []

    def serving(self, sockets=None):
        # the models run on a worker thread: look from a new thread, as that one is
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()

    monkeypatch.setattr(uvicorn.Server, "run", serving)
    assert main(["serve", str(tiny_model), "--port", "0", "--threads", "1"]) == 0
    _spy(monkeypatch, modeling, "load", seen, stop=True)  # train loads its model once the threads are set
    data = tmp_path / "d.txt"
    data.write_text("\n".join(make_corpus(20)) + "\n", encoding="utf-8")
    with pytest.raises(Seen):
        main(["train", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "r"),
              "--threads", "2"])
    _spy(monkeypatch, bench, "allocator", seen, stop=True)
    with pytest.raises(Seen):
        main(["bench", "--shapes", "tiny", "--threads", "1", "--no-isolate"])
    assert seen == [1, 2, 1]


def test_fixed_threads_and_seed_give_the_same_samples(tiny_model, capsys):
    argv = ["generate", str(tiny_model), "Osaka", "Kyoto is", "-n", "2", "--max-new-tokens", "8", "--seed", "5",
            "--threads", "2", "--json"]
    runs = []
    for _ in range(2):
        assert main(argv) == 0
        runs.append([json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()])
    assert runs[0] == runs[1] and len(runs[0]) == 4
    assert main([*argv[:-3], "6", *argv[-2:]]) == 0  # another seed, other samples
    assert [json.loads(x)["text"] for x in capsys.readouterr().out.splitlines()] != runs[0]

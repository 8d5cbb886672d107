"""Two CPU processes (torchrun + gloo): same trajectory as one process, rank 0 writes, resume works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from conftest import make_corpus
from test_loop import _wait_for_checkpoint, assert_bit_identical, metrics, same_history

from gpt2tune.cli import main

COMMON = ["--epochs", "2", "--lr", "3e-3", "--block-size", "64", "--samples", "1", "--keywords", "Osaka",
          "--patience", "none", "--dropout", "0", "--precision", "fp32"]


def torchrun(args: list[str], tmp: Path, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gpt2tune", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}  # torchrun's log folders stay in the test's
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "japan.txt"
    data.write_text("\n".join(make_corpus(200, seed=3)) + "\n")
    one = tmp / "one"
    assert main(["train", "--model", str(tiny_model), "--data", str(data), "--out", str(one), "--batch-size", "4",
                 *COMMON]) == 0
    two = tmp / "two"
    r = torchrun(["train", "--model", str(tiny_model), "--data", str(data), "--out", str(two), "--batch-size", "2",
                  *COMMON], tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return tiny_model, data, one, two, r


def test_two_processes_follow_the_one_process_trajectory(setup):
    _, _, one, two, r = setup
    assert "on 2 process(es)" in r.stdout
    a, b = metrics(one), metrics(two)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        # same global batch, same blocks per step: equal up to float summation order
        assert y["val_loss"] == pytest.approx(x["val_loss"], abs=2e-4)
        if x["train_loss"] is not None:
            assert y["train_loss"] == pytest.approx(x["train_loss"], abs=2e-4)


def test_only_rank_zero_writes(setup):
    _, _, one, two, r = setup
    assert len(metrics(two)) == len(metrics(one)) == 3
    samples = (two / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 3 and len(set(samples)) == 3
    assert r.stdout.count("epoch 1 | step") == 1  # one process prints
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_two_process_kill_and_resume(setup, tmp_path):
    tiny_model, data, _, two, _ = setup
    out = tmp_path / "two-killed"
    args = ["train", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--batch-size", "2",
            "--save-every", "2", *COMMON]
    proc = torchrun(args, tmp_path, wait=False)
    _wait_for_checkpoint(out, proc, min_step=3)
    # torchrun starts each rank in a session of its own: kill -9 the ranks too, as a crash of the machine would
    # (killing torchrun's group alone leaves them training on, holding the run's lock)
    ranks = psutil.Process(proc.pid).children(recursive=True)
    assert len(ranks) >= 2
    for p in ranks:
        p.kill()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(ranks, timeout=60)
    assert not alive
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=False)["loop"]["step"] < metrics(two)[-1]["step"]  # mid-run
    r = torchrun([*args, "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout
    assert_bit_identical(out / "last", two / "last")
    assert same_history(metrics(out), metrics(two))

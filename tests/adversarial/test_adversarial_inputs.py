"""Input files and option values at their edges: FIFOs and devices refused before opening, values out of range
refused by the config dataclasses (one rule for the CLI, config files, the Python API and the server)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from attack import one_line_error, run_cli
from conftest import make_corpus

from gpt2tune.config import SEED_MAX


@pytest.fixture()
def fifo(tmp_path):
    """A named pipe nobody writes to: opening it for reading would block for ever."""
    p = tmp_path / "sentences.txt"
    os.mkfifo(p)
    done = threading.Event()

    def unblock() -> None:
        # if a command opens the FIFO after all, it gets an EOF after 20 s and the test fails instead of hanging
        while not done.wait(20 if not done.is_set() else 0):
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=unblock, daemon=True).start()
    yield p
    done.set()


@pytest.fixture()
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(make_corpus(60)) + "\n", encoding="utf-8")
    return p


def test_fifo_as_data_is_refused_by_every_command(fifo, tiny_model, capsys, tmp_path):
    commands = {
        "train": ["train", "--data", fifo, "--model", tiny_model, "--out", tmp_path / "run"],
        "evaluate": ["evaluate", tiny_model, "--data", fifo],
        "corpus clean": ["corpus", "clean", fifo, "--out", tmp_path / "clean.txt"],
        "bench": ["bench", "--data", fifo, "--shapes", "tiny", "--no-isolate"],
        "train --config": ["train", "--config", fifo],
    }
    for name, args in commands.items():
        rc, out, err = run_cli(capsys, *args)
        one_line_error(rc, err, str(fifo), "is a FIFO (named pipe), not a regular file")
    assert [p.name for p in tmp_path.iterdir()] == ["sentences.txt"]  # nothing written


def test_endless_device_as_data_is_refused(tiny_model, capsys):
    rc, _, err = run_cli(capsys, "evaluate", tiny_model, "--data", "/dev/zero")
    one_line_error(rc, err, "/dev/zero is a character device")


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "seed must be in 0..4294967295, got -1"),
    (["--seed", str(SEED_MAX + 1)], "seed must be in 0..4294967295, got 4294967296"),
    (["--max-new-tokens", str(10**30)], "max-new-tokens 10000000000000000000... is out of range"),
    (["--top-k", str(2**64)], "top-k 18446744073709551616 is out of range"),
    (["--temperature", "1e-300"], "temperature must be 0 (greedy) or in [0.001, 100], got 1e-300"),
    (["--repetition-penalty", "1e-300"], "repetition-penalty must be in [0.01, 100] (1 = off), got 1e-300"),
    (["--top-p", "nan"], "top-p must be a finite number, got nan"),
    (["--stop", "\udcff"], "stop is not valid text"),
])
def test_generate_option_edges_are_one_line(tiny_model, capsys, args, message):
    rc, out, err = run_cli(capsys, "generate", tiny_model, "Tokyo", *args)
    one_line_error(rc, err, message)
    assert out == ""


def test_lone_surrogate_prompt_on_the_command_line(tiny_model, capsys):
    # bytes that are not UTF-8 in argv arrive as lone surrogates (Python's surrogateescape)
    rc, out, err = run_cli(capsys, "generate", tiny_model, "Tokyo \udcff")
    one_line_error(rc, err, "prompt 'Tokyo \\udcff' is not valid text")
    assert out == ""


@pytest.mark.parametrize("command", [["train", "--data", "x.txt"], ["bench"]])
def test_seed_edges_in_train_and_bench(capsys, tmp_path, command):
    for seed in ("-1", str(2**32)):
        rc, _, err = run_cli(capsys, *command, "--seed", seed)
        one_line_error(rc, err, f"seed must be in 0..{SEED_MAX}")
    config = tmp_path / "c.yaml"
    config.write_text(f"seed: {10**30}\n")
    rc, _, err = run_cli(capsys, *command, "--config", config)
    one_line_error(rc, err, "seed 10000000000000000000... is out of range")


def test_keywords_with_a_lone_surrogate(capsys, corpus, tmp_path):
    rc, _, err = run_cli(capsys, "train", "--data", corpus, "--keywords", "Tokyo,\udcff", "--out", tmp_path / "r")
    one_line_error(rc, err, "keywords is not valid text")
    assert not (tmp_path / "r").exists()


def test_csv_field_over_the_csv_limit(tiny_model, capsys, tmp_path):
    p = tmp_path / "big.csv"
    p.write_text('text\n"Tokyo is big."\n"' + "a" * 131_073 + '"\n', encoding="utf-8")
    rc, _, err = run_cli(capsys, "evaluate", tiny_model, "--data", p)
    one_line_error(rc, err, str(p), "line 3 is not valid CSV (field larger than field limit (131072))")


def test_jsonl_with_a_lone_surrogate(tiny_model, capsys, tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "Tokyo is big."}\n{"text": "Osaka \\udc80 is big."}\n', encoding="utf-8")
    rc, _, err = run_cli(capsys, "evaluate", tiny_model, "--data", p)
    one_line_error(rc, err, str(p), "line 2 holds invalid text (a lone surrogate")

"""Trust, round three (issue 24): no code from a run directory, text escaped for its reader, published pages
without the user's directories, inputs that --overwrite and compare --out never touch, waits with a ceiling,
sizes checked before building, and the tracebacks of the new attack as one line each.

Each test failed before its fix.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from attack import one_line_error, run_cli, snapshot
from conftest import make_corpus
from fake_wiki import FakeWiki, serve

from gpt2tune.config import TrainConfig, write_config
from gpt2tune.corpus import build_wikipedia_corpus
from gpt2tune.evaluate.run import format_markdown
from gpt2tune.run import checkpoint
from gpt2tune.run.report import write_report

TRAIN = ["--epochs", "1", "--batch-size", "4", "--block-size", "64", "--samples", "0", "--patience", "none"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "japan.txt"
    p.write_text("\n".join(make_corpus(200, seed=3)) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def finished_run(tiny_model, data_file, tmp_path_factory) -> Path:
    """A one-step run with a checkpoint (module-wide: each test copies it before attacking it)."""
    from gpt2tune.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--model", str(tiny_model), "--data", str(data_file), "--out", str(out), "--max-steps",
                 "1", *TRAIN]) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


# ------------------------------------------------------------------------------------------------ 1. security

class Planted:
    """A pickle that creates a file when it is unpickled: the code a hostile run directory would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_planted_pickle_in_the_training_state_is_refused_and_never_runs(capsys, tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    state = run / "last" / "trainer_state.pt"
    torch.save({"loop": Planted(marker)}, state)
    rc, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-steps", "2")
    line = one_line_error(rc, err, str(state), "not loaded")
    assert not marker.exists(), "the pickle's code ran"
    assert "open" in line  # what it asked to call


def test_the_training_state_holds_only_safe_types_and_old_states_still_load(tmp_path, finished_run):
    state = finished_run / "last" / "trainer_state.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(state) == []  # no numpy arrays, nothing to allow
    saved = checkpoint.load_state(finished_run / "last")
    assert isinstance(saved["rng"][0]["numpy"][1], list)
    # a state written before (numpy's random state as an array) still loads, and restores the same stream
    np.random.seed(7)
    old = {**saved, "rng": [{"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}]}
    expected = np.random.rand(3)
    (tmp_path / "last").mkdir()
    torch.save(old, tmp_path / "last" / "trainer_state.pt")
    loaded = checkpoint.load_state(tmp_path / "last")
    checkpoint.set_rng_state(loaded["rng"][0])
    assert np.array_equal(np.random.rand(3), expected)
    checkpoint.set_rng_state(checkpoint.rng_state())  # and today's form round-trips
    now = checkpoint.rng_state()
    after = np.random.rand(3)
    checkpoint.set_rng_state(now)
    assert np.array_equal(np.random.rand(3), after)


HOSTILE = "<script>alert(1)</script> | a\nb ![x](http://evil.test/t.png) [y](javascript:alert(2)) `c`"


def comparison() -> dict:
    side = {"text": HOSTILE, "ended": False}
    return {"settings": {"base": "/abs/base`x", "tuned": "/abs/run", "heldout": "all sentences of /abs/d.txt",
                         "heldout_sentences": 3, "heldout_mean_length": 5.0,
                         "sampling": {"top_k": 50, "top_p": 0.95, "temperature": 1.0, "max_new_tokens": 8, "n": 1,
                                      "seed": 0}},
            "table": [{"metric": "perplexity", "label": "held-out perplexity", "better": "lower", "base": 9.0,
                       "tuned": 4.0, "winner": "tuned"}],
            "samples": [{"keyword": HOSTILE, "index": 0, "base": side, "tuned": side}]}


def test_compare_md_escapes_keywords_and_samples():
    md = format_markdown(comparison())
    assert "<script" not in md and "<" not in md.replace("&lt;", "")
    assert not re.search(r"(?<!\\)\]\(", md)  # no link or image survives as one
    rows = [x for x in md.splitlines() if x.startswith("| ") and "keyword" not in x and "metric" not in x]
    sample_rows = rows[1:]
    assert len(sample_rows) == 1, md  # the newline in the text did not break the row
    cells = re.split(r"(?<!\\)\|", sample_rows[0])
    assert len(cells) == 5, sample_rows[0]  # "" keyword base tuned "": no cell broken by a `|`
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def hand_made_run(tmp_path: Path, data: Path, model: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    write_config(TrainConfig(data=str(data), out=str(run.resolve()), model=str(model)), run / "config.yaml")
    rows = [{"epoch": 0, "step": 0, "train_loss": None, "val_loss": 5.0, "val_ppl": 148.4, "best": True,
             "event": "start"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "samples.jsonl").write_text(json.dumps({"step": 0, "epoch": 0, "keyword": HOSTILE, "text": HOSTILE,
                                                   "ended": True}) + "\n")
    return run


def test_report_html_escapes_and_names_no_absolute_path(tmp_path):
    secret = tmp_path / "home" / "someone"
    data, model = secret / "private corpus.txt", secret / "models" / "gpt2-base"
    run = hand_made_run(tmp_path, data, model)
    cmp = comparison()
    cmp["settings"].update(base=str(model), tuned=str(run.resolve()),
                           heldout=f"val split of {data} (seed 42, val fraction 0.1), as the run {run.resolve()} "
                                   "held it out")
    (run / "compare.json").write_text(json.dumps(cmp))
    (run / "data.json").write_text(json.dumps({"file": str(data), "model": str(model)}))
    page = write_report(run).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert str(tmp_path) not in page and "/home/someone" not in page
    assert "private corpus.txt" in page and "gpt2-base" in page


# ----------------------------------------------------------------------------------------------- 2. data loss

def test_overwrite_never_removes_the_data_file_it_trains_on(capsys, tmp_path, tiny_model, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    data = run / "val.txt"
    data.write_text("\n".join(make_corpus(120, seed=5)) + "\n", encoding="utf-8")  # the user's file, by that name
    before = snapshot(run)
    rc, _, err = run_cli(capsys, "train", "--model", tiny_model, "--data", data, "--out", run, "--overwrite",
                         "--max-steps", "1", *TRAIN)
    one_line_error(rc, err, f"--data {data}", "--overwrite would delete")
    assert snapshot(run) == before


def test_compare_out_on_a_directory_that_is_no_run_leaves_its_report_alone(capsys, tmp_path, tiny_model,
                                                                          data_file):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: own\n")
    (out / "report.html").write_text("<p>my own report</p>")
    rc, _, err = run_cli(capsys, "compare", "--base", tiny_model, "--tuned", tiny_model, "--data", data_file,
                         "--out", out, "--keywords", "Kyoto", "--samples", "1", "--max-new-tokens", "4",
                         "--precision", "fp32")
    assert rc == 0, err
    assert (out / "report.html").read_text() == "<p>my own report</p>"
    assert (out / "config.yaml").read_text() == "my: own\n"
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md", "config.yaml", "report.html"]


# --------------------------------------------------------------------------------------------------- 3. hangs

@contextlib.contextmanager
def fake_wiki(**faults):
    wiki = FakeWiki(faults=faults)
    server, url = serve(wiki)
    try:
        yield wiki, url
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("asked", ["86400", "1e300", "inf"])
def test_a_server_asked_wait_is_capped_and_said(capsys, tmp_path, asked):
    from gpt2tune.corpus.wikipedia import MAX_SERVER_WAIT

    slept: list[float] = []
    with fake_wiki(Japan=[(429, {"Retry-After": asked}, None)]) as (wiki, url):
        build_wikipedia_corpus(topic="Japan", api_url=url, out=str(tmp_path / "j.txt"), depth=0, cache=False,
                               rate=1000, sleep=slept.append, min_words=3)
    assert slept and max(slept) == MAX_SERVER_WAIT  # waited, but not the day it asked for
    err = capsys.readouterr().err
    assert f"asked to wait {float(asked):g} s" in err and f"waiting {MAX_SERVER_WAIT:g} s" in err


@pytest.mark.parametrize("flag, value", [("--rate", "1e-9"), ("--rate", "1e-300"), ("--timeout", "1e300"),
                                         ("--timeout", "inf")])
def test_waits_an_option_sets_are_bounded(capsys, tmp_path, flag, value):
    with fake_wiki() as (wiki, url):
        rc, _, err = run_cli(capsys, "corpus", "wikipedia", "Japan", "--api-url", url, "--out", tmp_path / "o.txt",
                             "--no-cache", "--depth", "1", flag, value)
    one_line_error(rc, err, flag.lstrip("-"))
    assert not wiki.log and not (tmp_path / "o.txt").exists()


@pytest.fixture()
def huge_model(tmp_path, tiny_model) -> Path:
    """The tiny model under a config of 100,000 layers (its weights hold 2)."""
    import shutil

    d = shutil.copytree(tiny_model, tmp_path / "huge")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "n_layer": 100_000}))
    return d


@pytest.fixture()
def builds(monkeypatch) -> list[int]:
    """Every GPT-2 layer built, on any device, by any path (from_config, from_pretrained): building 100,000 of
    them takes minutes even on the meta device, so the 51st fails at once instead."""
    from transformers.models.gpt2 import modeling_gpt2

    built: list[int] = []
    original = modeling_gpt2.GPT2Block.__init__

    def spy(self, *args, **kwargs):
        built.append(1)
        assert len(built) <= 50, "a model of the config's full size is being built"
        original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_gpt2.GPT2Block, "__init__", spy)
    return built


@pytest.mark.parametrize("command", ["generate", "evaluate", "serve", "export"])
def test_a_config_of_a_huge_model_is_refused_before_it_is_built(capsys, tmp_path, huge_model, builds, data_file,
                                                                  command):
    args = {"generate": ["generate", huge_model, "Tokyo"],
            "evaluate": ["evaluate", huge_model, "--data", data_file],
            "serve": ["serve", huge_model, "--port", "0"],
            "export": ["export", huge_model, "--gguf", tmp_path / "m.gguf"]}[command]
    rc, _, err = run_cli(capsys, *args)
    one_line_error(rc, err, str(huge_model / "config.json"), "100,000", "parameters")
    assert len(builds) <= 3  # a model of 1 layer and one of 2, to count what each layer adds


def test_a_model_beyond_the_machines_memory_is_refused_before_it_is_built(capsys, huge_model, builds):
    # .bin weights can't be counted from a header: the check against the memory the fp32 weights need still holds
    from safetensors.torch import load_file

    torch.save(load_file(huge_model / "model.safetensors"), huge_model / "pytorch_model.bin")
    (huge_model / "model.safetensors").unlink()
    config = json.loads((huge_model / "config.json").read_text())
    (huge_model / "config.json").write_text(json.dumps({**config, "n_layer": 10_000_000}))  # 2 TB in fp32
    rc, _, err = run_cli(capsys, "generate", huge_model, "Tokyo")
    one_line_error(rc, err, str(huge_model / "config.json"), "GiB of memory")
    assert len(builds) <= 3  # a model of 1 layer and one of 2, to count what each layer adds


# ------------------------------------------------------------------------------------------- 4. wrong result

@pytest.mark.parametrize("value", ["nanm", "infm", "-infm"])
def test_save_every_not_a_number_of_minutes_is_refused(capsys, tmp_path, tiny_model, data_file, value):
    rc, _, err = run_cli(capsys, "train", "--model", tiny_model, "--data", data_file, "--out", tmp_path / "r",
                         "--save-every", value, "--max-steps", "1", *TRAIN)
    one_line_error(rc, err, "save-every")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------- 5. tracebacks

@pytest.fixture()
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and mount); skipped where it can't be had."""
    d = tmp_path / "disk"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("no small tmpfs here (mount needs root)")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_a_full_disk_under_the_wikipedia_cache_is_one_line(capsys, tmp_path, tiny_disk):
    big = " ".join(f"Tokyo has {n} temples and many gardens." for n in range(3000))  # ~130 KB: over the disk
    with fake_wiki() as (wiki, url):
        wiki.pages["Japan"] = (1001, big)
        rc, _, err = run_cli(capsys, "corpus", "wikipedia", "Japan", "--api-url", url, "--out", tmp_path / "o.txt",
                             "--cache-dir", tiny_disk, "--depth", "0", "--rate", "1000")
    one_line_error(rc, err, str(tiny_disk), "--no-cache")
    assert not list(tiny_disk.rglob("*.tmp")) and not (tmp_path / "o.txt").exists()


class RawWiki(BaseHTTPRequestHandler):
    """Answers every GET with the server's `body` bytes as JSON."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def raw_wiki(body: bytes):
    server = ThreadingHTTPServer(("127.0.0.1", 0), RawWiki)
    server.daemon_threads, server.body = True, body
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w/api.php"
    finally:
        server.shutdown()
        server.server_close()


PAGE = {"title": "Japan", "lastrevid": 1, "extract": "Japan is an island country in East Asia. Tokyo is its capital."}


@pytest.mark.parametrize("body, message", [
    (b'{"query": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deep"),
    (json.dumps({"query": {"pages": [{**PAGE, "extract": PAGE["extract"] + " Kyoto \ud800 is old."}]}}).encode(),
     "not valid Unicode"),
])
def test_hostile_json_from_the_api_is_one_line(capsys, tmp_path, body, message):
    with raw_wiki(body) as url:
        rc, _, err = run_cli(capsys, "corpus", "wikipedia", "Japan", "--api-url", url, "--out", tmp_path / "o.txt",
                             "--cache-dir", tmp_path / "cache", "--depth", "0", "--rate", "1000", "--retries", "0")
    one_line_error(rc, err, url, message)
    assert not (tmp_path / "o.txt").exists() and not list((tmp_path / "cache").rglob("*.json"))

"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_corpus

from gpt2tune.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2tune", *args], capture_output=True, text=True, timeout=300)


# what a command says before it fails: its thread choice and the model it is loading
INFO = re.compile(r"gpt2tune: (\d+ threads? \(|loading )")


def assert_one_line_error(rc: int, err: str, expected: str) -> None:
    assert rc != 0
    lines = [x for x in err.strip().splitlines() if x.strip() and not INFO.match(x)]
    assert len(lines) == 1, err
    assert lines[0].startswith("gpt2tune: error: "), err
    assert expected in lines[0], err
    assert "Traceback" not in err


def bad_files(tmp: Path) -> dict[str, tuple[Path, str, list[str]]]:
    """name -> (data file, expected message part, extra flags)"""
    good = make_corpus(50)
    cases = {}

    def f(name: str, content: bytes) -> Path:
        p = tmp / name
        p.write_bytes(content)
        return p

    cases["empty"] = (f("empty.txt", b""), "holds no sentences", [])
    cases["blank"] = (f("blank.txt", b"\n  \r\n\t\n"), "holds no sentences", [])
    cases["binary"] = (f("model.bin", bytes(range(256)) * 40), "binary file", [])
    cases["latin1"] = (f("latin1.txt", "Café in Kyōto.\n".encode("utf-8") + "Caf\xe9 au lait.\n".encode("latin-1")),
                       "not UTF-8 text (bad byte 0xe9 on line 2)", [])
    cases["huge_line"] = (f("huge.txt", b"word " * 210_000 + b"\n"), "line 1 is", [])
    cases["too_few"] = (f("one.txt", b"Only one sentence here.\n"), "too few sentences", [])
    cases["csv_column"] = (f("a.csv", ("id,body\n" + "".join(f'{i},"{s}"\n' for i, s in enumerate(good))).encode()),
                           "has no column 'text'", [])
    cases["missing"] = (tmp / "nope.txt", "data file not found", [])
    return cases


@pytest.mark.parametrize("case", ["empty", "blank", "binary", "latin1", "huge_line", "too_few", "csv_column",
                                  "missing"])
def test_bad_data_files(case, tmp_path, tiny_model, capsys):
    data, expected, extra = bad_files(tmp_path)[case]
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--model", str(tiny_model), *extra])
    assert_one_line_error(rc, capsys.readouterr().err, expected)
    assert not out.exists()  # nothing half-written that looks like a run


@pytest.fixture()
def data(tmp_path) -> Path:
    p = tmp_path / "ok.txt"
    p.write_text("\n".join(make_corpus(60)))
    return p


@pytest.mark.parametrize("yaml_text, expected", [
    ("learning_rate: 0.1\n", "unknown config key 'learning_rate'"),
    ("epochs: three\n", "'epochs' must be an integer"),
    ("lr: [1, 2]\n", "'lr' must be a number"),
    ("resume: 1\n", "'resume' must be true or false"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("lr: [unclosed\n", "is not valid YAML"),
])
def test_bad_config_files(yaml_text, expected, tmp_path, data, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    rc = main(["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")])
    assert_one_line_error(rc, capsys.readouterr().err, expected)


@pytest.mark.parametrize("flags, expected", [
    (["--lr", "-0.1"], "lr must be positive"),
    (["--val-fraction", "1.5"], "val-fraction must be in (0, 1)"),
    (["--precision", "fp8"], "precision must be"),
    (["--block-size", "4096"], "above the model's context of 256"),
    (["--epochs", "x"], "'x' is not a valid integer"),
    (["--save-every", "soon"], "save-every must be"),
    (["--model", "./no/such/model"], "no such run or model: ./no/such/model"),
])
def test_out_of_range_train_options(flags, expected, tmp_path, data, tiny_model, capsys):
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model", str(tiny_model), *flags])
    assert_one_line_error(rc, capsys.readouterr().err, expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--max-new-tokens", "0"], "max-new-tokens must be at least 1"),
    (["--max-new-tokens", "5000"], "exceeds the model's context"),
    (["--temperature", "-1"], "temperature must be 0 (greedy) or in"),
])
def test_bad_generate_options(flags, expected, tiny_model, capsys):
    rc = main(["generate", str(tiny_model), "Osaka", *flags])
    assert_one_line_error(rc, capsys.readouterr().err, expected)


def test_out_holding_other_files_is_refused(tmp_path, data, tiny_model, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    rc = main(["train", "--data", str(data), "--out", str(out), "--model", str(tiny_model)])
    assert_one_line_error(rc, capsys.readouterr().err, "holds no gpt2tune run")
    assert (out / "thesis.tex").read_text() == "precious"
    rc = main(["train", "--data", str(data), "--out", str(out), "--model", str(tiny_model), "--resume"])
    assert_one_line_error(rc, capsys.readouterr().err, "nothing to resume")


def test_config_file_values_and_flag_override(tmp_path, data, tiny_model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model}\ndata: {data}\nepochs: 1\nlr: 0.002\nblock-size: 64\nsamples: 0\n"
                   "keywords: [Osaka, Kyoto is the]\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--lr", "0.001", "--max-steps", "1"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "lr: 0.001" in saved and "block_size: 64" in saved and "epochs: 1" in saved
    assert "- Kyoto is the" in saved


def test_subprocess_errors_have_no_traceback(tmp_path):
    """The installed entry point (python -m gpt2tune) behaves like main()."""
    r = run_cli("train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r"))
    assert r.returncode == 1
    assert_one_line_error(r.returncode, r.stderr, "data file not found")
    r = run_cli("generate", "gpt2-not-cached-anywhere", "Osaka")
    assert_one_line_error(r.returncode, r.stderr, "give a run directory, a local model directory")
    assert "--model" not in r.stderr  # generate has no --model option
    r = run_cli("train", "--no-such-flag")
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr

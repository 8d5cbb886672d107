"""Fast start (no torch for --help and corpus), a safe tcmalloc re-run, and what --help marks as required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2tune import process

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "transformers", "accelerate")

# runs the CLI in-process for each argv, like the installed `gpt2tune` script, then names the heavy modules loaded
RUNNER = """
import sys
from gpt2tune.cli import main
for argv in {argvs!r}:
    rc = main(argv)
    assert rc == 0, (argv, rc)
print("LOADED", *[m for m in {heavy!r} if m in sys.modules])
"""


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def _script(tmp_path: Path, code: str) -> Path:
    """code as a script file kept outside the working directory, as the installed console script is."""
    script = tmp_path / "bin" / "gpt2tune"
    script.parent.mkdir(exist_ok=True)
    script.write_text(code, encoding="utf-8")
    return script


def test_help_and_corpus_import_no_torch(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("Kyoto has many old temples and quiet gardens. Osaka is known for its food and its markets.\n")
    commands = ["train", "generate", "evaluate", "compare", "serve", "bench", "report", "corpus", "demo"]
    argvs = [["--help"], *[[c, "--help"] for c in commands], ["corpus", "clean", "--help"],
             ["corpus", "wikipedia", "--help"], ["corpus", "clean", str(text), "--out", str(tmp_path / "s.txt")]]
    script = _script(tmp_path, RUNNER.format(argvs=argvs, heavy=HEAVY))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "LOADED"  # none of torch, transformers, accelerate
    assert (tmp_path / "s.txt").read_text().count("\n") == 2  # the corpus command did its work


def test_help_marks_only_what_is_required():
    from click.testing import CliRunner

    from gpt2tune.cli import cli

    def option_help(command: str, flag: str) -> str:
        lines = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output.splitlines()
        at = next(i for i, x in enumerate(lines) if x.strip().startswith(flag + " "))
        return " ".join([lines[at]] + [x for x in lines[at + 1:at + 3] if not x.strip().startswith("-")])

    assert "[required]" not in option_help("compare", "--data")  # it defaults to the run's own data file
    for flag in ("--base", "--tuned", "--out"):
        assert "[required]" in option_help("compare", flag)
    assert "[required]" in option_help("train", "--data")
    assert "[required]" in option_help("evaluate", "--data")
    assert "[default: 42]" in option_help("generate", "--seed")
    assert "auto" in option_help("serve", "--threads") and "[required]" not in option_help("serve", "--threads")


HOSTILE = "open({marker!r}, 'w').write('imported from the working directory'); raise SystemExit(99)\n"


def test_tcmalloc_rerun_never_imports_from_the_working_directory(tmp_path):
    """A gpt2tune.py or yaml.py in the working directory must not run instead of the tool (PYTHONPATH still works:
    this checkout's src/ is found through it)."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    marker = tmp_path / "hostile-ran"
    for name in ("gpt2tune.py", "yaml.py", "click.py"):
        (cwd / name).write_text(HOSTILE.format(marker=str(marker)), encoding="utf-8")
    r = subprocess.run(process.rerun_argv(["--version"]), cwd=cwd, capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "version" in r.stdout and not marker.exists()
    if process.tcmalloc_library() is None or not sys.platform.startswith("linux"):
        return  # the re-execution itself needs tcmalloc, on Linux
    # the whole path: `train` re-executes itself with tcmalloc, then refuses the option as it should
    script = _script(tmp_path, "import sys\nfrom gpt2tune.cli import main\nsys.exit(main())\n")
    env = {k: v for k, v in _env().items() if k not in ("LD_PRELOAD", process.TCMALLOC_ENV)}
    r = subprocess.run([sys.executable, str(script), "train", "--data", "x.txt", "--lr", "-1"], cwd=cwd,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "lr must be positive" in r.stderr, r.stderr
    assert not marker.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tcmalloc is preloaded on Linux only")
def test_tcmalloc_rerun_happens_before_torch_is_imported(tmp_path):
    """The re-run replaces the process before any heavy import, so the heavy libraries load once."""
    code = ("import sys\nfrom gpt2tune import process\n"
            "process.os.execve = lambda *a: (print('EXEC', *[m for m in %r if m in sys.modules]), sys.exit(0))\n"
            "process.tcmalloc_library = lambda: 'libtcmalloc_minimal.so.4'\n"
            "from gpt2tune.cli import main\nsys.exit(main())\n" % (HEAVY,))
    env = {k: v for k, v in _env().items() if k not in ("LD_PRELOAD", process.TCMALLOC_ENV)}
    r = subprocess.run([sys.executable, str(_script(tmp_path, code)), "train", "--data", "x.txt"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.strip() == "EXEC", r.stderr



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tcmalloc is preloaded on Linux only")
@pytest.mark.parametrize("argv", [["train", "--data", "x.txt"], ["bench", "--shapes", "tiny"]])
def test_the_command_reruns_before_it_parses_anything(tmp_path, argv):
    """The `gpt2tune` command and `python -m gpt2tune` (__main__.main) re-run under tcmalloc before importing the
    command line (click, the options), so the first Python start costs almost nothing."""
    loaded = ("click", "gpt2tune.cli", "gpt2tune.config") + HEAVY
    code = ("import sys\nfrom gpt2tune import process\n"
            "process.os.execve = lambda *a: (print('EXEC', *[m for m in %r if m in sys.modules]), sys.exit(0))\n"
            "process.tcmalloc_library = lambda: 'libtcmalloc_minimal.so.4'\n"
            "from gpt2tune.__main__ import main\nsys.exit(main())\n" % (loaded,))
    env = {k: v for k, v in _env().items() if k not in ("LD_PRELOAD", process.TCMALLOC_ENV)}
    r = subprocess.run([sys.executable, str(_script(tmp_path, code)), *argv], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.stdout.strip() == "EXEC", r.stderr

def test_the_command_ends_without_teardown_but_with_its_threads_exit_handlers_and_output(tmp_path):
    """After the command, once torch is loaded, the process ends by os._exit (no 0.7 s module teardown), yet as a
    normal exit would end: a thread someone started finishes, the exit handlers run, all output arrives, the exit
    code is the command's."""
    code = ("import atexit, sys, threading, time\nimport torch\nfrom pathlib import Path\n"
            "import gpt2tune.__main__ as entry\nimport gpt2tune.cli as cli\nout = Path(sys.argv[1])\n"
            "def command():\n"
            "    threading.Thread(target=lambda: (time.sleep(0.5), (out / 'thread').write_text('done'))).start()\n"
            "    atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
            "    sys.stdout.write('x' * 100000)  # no newline, not flushed\n"
            "    return 3\n"
            "cli.main = command\nentry.exit_now = lambda code, real=entry.exit_now: (print('exit_now', code, "
            "file=sys.stderr), real(code))\nsys.exit(entry.main())\n")
    r = subprocess.run([sys.executable, str(_script(tmp_path, code)), str(tmp_path)], capture_output=True,
                       text=True, env=_env(), timeout=120)
    assert r.returncode == 3 and r.stderr.strip() == "exit_now 3", r.stderr
    assert r.stdout == "x" * 100000
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"


def test_the_garbage_collector_waits_out_a_long_jobs_imports_then_skips_their_objects(tmp_path):
    """`gpt2tune train` pauses the cyclic garbage collector from its start until train() begins (the imports' full
    collections cost 0.5 s), then freezes what exists and collects again; in-process use is left alone."""
    code = ("import gc, os, sys\nfrom gpt2tune import process\nfrom gpt2tune.run import resume\n"
            "process.imports_done()\nprint('library use', gc.isenabled(), gc.get_freeze_count())\n"
            "real = resume.settle\n"
            "def spy(*a, **k):\n"
            "    if not spy.calls:\n"
            "        spy.calls.append(1)\n"
            "        print('command line', gc.isenabled())\n"
            "        return real(*a, **k)\n"
            "    print('train()', gc.isenabled(), gc.get_freeze_count() > 100000, flush=True)\n"
            "    os._exit(0)\n"
            "spy.calls = []\nresume.settle = spy\n"
            "from gpt2tune.__main__ import main\nsys.exit(main())\n")
    env = _env(**{process.TCMALLOC_ENV: "0"})
    (tmp_path / "x.txt").write_text("Osaka is a big city by the sea.\n")
    r = subprocess.run([sys.executable, str(_script(tmp_path, code)), "train", "--data", str(tmp_path / "x.txt")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.splitlines() == ["library use True 0", "command line False", "train() True True"], r.stderr


# ------------------------------------------------------------------------------------- messages that fit the command

@pytest.mark.parametrize("command", [
    ["generate", "{m}", "Osaka"], ["evaluate", "{m}", "--data", "{d}"], ["serve", "{m}", "--port", "0"],
    ["compare", "--base", "{m}", "--tuned", "{m}", "--data", "{d}", "--out", "{o}"]])
@pytest.mark.parametrize("missing", ["runs/japan", "./runs/japan", "{tmp}/nope", "{tmp}/m.gguf"])
def test_a_missing_run_or_model_says_so(command, missing, tmp_path, monkeypatch, capsys):
    from gpt2tune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    data = tmp_path / "d.txt"
    data.write_text("Osaka is a big city by the sea.\n", encoding="utf-8")
    model = missing.format(tmp=tmp_path)
    argv = [a.format(m=model, d=data, o=tmp_path / "cmp") for a in command]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"gpt2tune: error: no such run or model: {model}\n"  # and nothing else
    assert not (tmp_path / "cmp").exists()


def test_a_run_records_its_data_absolutely_and_compare_finds_it_from_elsewhere(tiny_model, tmp_path, monkeypatch,
                                                                               capsys):
    import json

    import yaml
    from conftest import make_corpus

    from gpt2tune.cli import main

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "japan.txt").write_text("\n".join(make_corpus(40)) + "\n", encoding="utf-8")
    monkeypatch.chdir(work)
    assert main(["train", "--model", str(tiny_model), "--data", "japan.txt", "--out", "runs/r", "--max-steps", "1",
                 "--samples", "0", "--block-size", "64", "--threads", "1"]) == 0
    saved = yaml.safe_load((work / "runs" / "r" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"] == str(work / "japan.txt") and saved["threads"] == 1  # recorded as it ran
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["compare", "--base", str(tiny_model), "--tuned", str(work / "runs" / "r"), "--out", "cmp",
                 "--keywords", "Kyoto", "--samples", "1", "--max-new-tokens", "3"]) == 0
    result = json.loads((elsewhere / "cmp" / "compare.json").read_text(encoding="utf-8"))
    assert result["settings"]["heldout"].startswith(f"val split of {work / 'japan.txt'}")
    assert result["settings"]["heldout_sentences"] == 4  # the run's val split: 10% of 40 sentences


# runs each argv in-process, expecting a one-line error, then names the heavy modules loaded
FAILING = """
import sys
from gpt2tune.cli import main
for argv in {argvs!r}:
    assert main(argv) == 1, argv
print("LOADED", *[m for m in {heavy!r} if m in sys.modules])
"""


def test_a_missing_model_or_data_fails_before_torch_loads(tmp_path):
    data = tmp_path / "s.txt"
    data.write_text("Kyoto has many old temples and quiet gardens.\n")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    nope = str(tmp_path / "nope")
    argvs = [["train", "--model", nope, "--data", str(data), "--out", str(tmp_path / "o1")],
             ["train", "--model", str(model), "--data", nope + ".txt", "--out", str(tmp_path / "o2")],
             ["generate", "./runs/nope", "Japan"], ["evaluate", nope, "--data", str(data)],
             ["evaluate", str(model), "--data", nope + ".txt"], ["export", nope + ".gguf", "--gguf", "x.gguf"],
             ["serve", str(model), "--base", nope]]
    script = _script(tmp_path, FAILING.format(argvs=argvs, heavy=HEAVY))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                       env=_env(GPT2TUNE_TCMALLOC="0"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "LOADED"  # none of torch, transformers, accelerate
    errors = [line for line in r.stderr.splitlines() if line.startswith("gpt2tune: error:")]
    assert errors == [
        f"gpt2tune: error: no such run or model: {nope}",
        f"gpt2tune: error: data file not found: {nope}.txt",
        "gpt2tune: error: no such run or model: ./runs/nope",
        f"gpt2tune: error: no such run or model: {nope}",
        f"gpt2tune: error: data file not found: {nope}.txt",
        f"gpt2tune: error: no such run or model: {nope}.gguf",
        f"gpt2tune: error: no such run or model: {nope}",
    ]
    assert not list(tmp_path.glob("o*"))  # nothing was written

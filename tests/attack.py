"""Helpers of the adversarial suite: run the CLI in-process and check it failed with one line and left no trace."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from gpt2tune.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `gpt2tune ARGS` run in this process."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# lines a command may print before it fails: its thread choice, the model it is loading, and a slow data step
# (console.phase: "gpt2tune: tokenizing ... ..." after 2 s, then "...: 32 s so far")
PROGRESS = re.compile(r"(gpt2tune: )?(loading |\d+ threads? \(|(?!error: ).*( \.\.\.|: \d+ s so far)$)")


def one_line_error(rc: int, err: str, *fragments: str) -> str:
    """Assert a non-zero exit with exactly one `gpt2tune: error:` line holding every fragment; return the line."""
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip() and not PROGRESS.match(x)]
    assert len(lines) == 1, err
    assert lines[0].startswith("gpt2tune: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with a hash of its bytes: compare before and after to see nothing changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

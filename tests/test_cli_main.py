"""The CLI entry point itself (regressions found while adding `serve`)."""

from __future__ import annotations

from gpt2tune.cli import main


def test_bare_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("Usage: gpt2tune") and "Traceback" not in out.err

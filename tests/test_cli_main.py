"""The CLI entry point itself (regressions found while adding `serve`)."""

from __future__ import annotations

from gpt2tune.cli import main


def test_bare_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("Usage: gpt2tune") and "Traceback" not in out.err


def test_greedy_with_several_samples_is_a_user_error_not_a_traceback(tiny_model, capsys):
    assert main(["generate", str(tiny_model), "Tokyo", "--temperature", "0", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2tune: error: temperature 0 (greedy) gives one sample per prompt") and "Traceback" not in err

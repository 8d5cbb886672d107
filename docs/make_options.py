"""Regenerate docs/options.md from the commands' --help: python docs/make_options.py"""

from pathlib import Path

from click.testing import CliRunner

from gpt2tune.cli import cli

COMMANDS = [["demo"], ["train"], ["generate"], ["evaluate"], ["compare"], ["report"], ["export"], ["push"], ["serve"],
            ["data", "inspect"], ["corpus", "wikipedia"], ["corpus", "clean"], ["bench"]]

HEAD = """# Every command's options

Generated from `--help` by `python docs/make_options.py`. Every option is also a key of a YAML file given with
`--config` (dashes or underscores; flags given on the command line win), and a keyword argument of the
matching Python function.
"""


def main() -> None:
    parts = [HEAD]
    for command in COMMANDS:
        result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=110, prog_name="gpt2tune")
        assert result.exit_code == 0, result.output
        parts.append(f"## `gpt2tune {' '.join(command)}`\n\n```\n{result.output.rstrip()}\n```\n")
    out = Path(__file__).with_name("options.md")
    out.write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

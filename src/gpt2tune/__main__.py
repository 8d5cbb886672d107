"""`python -m gpt2tune` and the `gpt2tune` command: a long CPU job re-runs itself under tcmalloc first, before even
the command line is parsed (one Python start's worth of imports, not two), then the CLI."""

import sys

from gpt2tune.hardware import long_job, rerun_with_tcmalloc


def main() -> int:
    if long_job(sys.argv[1:]):
        rerun_with_tcmalloc(sys.argv[1:])  # tcmalloc when installed (GPT2TUNE_TCMALLOC=0: off)
    from gpt2tune.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())

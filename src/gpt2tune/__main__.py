"""`python -m gpt2tune` and the `gpt2tune` command: a long CPU job re-runs itself under tcmalloc first, before even
the command line is parsed (one Python start's worth of imports, not two), then the CLI; at the end the process
exits without tearing down its modules."""

import atexit
import os
import sys
import threading

from gpt2tune.process import defer_gc, long_job, rerun_with_tcmalloc


def main() -> int:
    if long_job(sys.argv[1:]):
        rerun_with_tcmalloc(sys.argv[1:])  # tcmalloc when installed (GPT2TUNE_TCMALLOC=0: off)
        defer_gc()  # until the job's imports are done (its run function calls process.imports_done)
        from gpt2tune.threads import begin_busy_window

        begin_busy_window()  # the others' load is measured over the imports, not over a wait of its own
    from gpt2tune.cli import main as cli_main

    code = cli_main()
    if "torch" in sys.modules:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process as a normal exit would, less the teardown of every module and object, which takes 0.7 s
    once torch and transformers are imported: the threads others started finish, the exit handlers run (trackers,
    logging, worker pools), the output is flushed; then os._exit."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

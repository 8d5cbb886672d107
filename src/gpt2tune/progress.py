"""Progress for people: a tqdm bar on stderr for any phase that takes more than a couple of seconds."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from tqdm import tqdm

DELAY_S = 2.0  # a phase shorter than this shows no bar at all
LOG_EVERY_S = 30.0  # not a terminal (a log, CI): one plain line this often


class _Lines:
    """A stream that turns tqdm's carriage-return redraws into whole lines, for logs that are not terminals."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **kwargs: Any) -> tqdm:
    """A bar on stderr that appears once a phase has run DELAY_S seconds: redrawn on a terminal, a plain line
    every LOG_EVERY_S seconds otherwise."""
    stream = sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, delay=DELAY_S, leave=False,
                file=stream if tty else _Lines(stream), mininterval=0.1 if tty else LOG_EVERY_S,
                maxinterval=10 if tty else LOG_EVERY_S, dynamic_ncols=tty, **kwargs)


@contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    """Say what a slow step without a natural count is doing: nothing if it ends within DELAY_S seconds, else a
    line then, a line every LOG_EVERY_S seconds after, and how long it took."""
    if not enabled:
        yield
        return
    t0, done, said = time.perf_counter(), threading.Event(), threading.Event()

    def tell() -> None:
        if done.wait(DELAY_S):
            return
        print(f"gpt2tune: {what} ...", file=sys.stderr, flush=True)
        said.set()
        while not done.wait(LOG_EVERY_S):
            print(f"gpt2tune: {what}: {time.perf_counter() - t0:.0f} s so far", file=sys.stderr, flush=True)

    teller = threading.Thread(target=tell, daemon=True)
    teller.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        teller.join()
        if said.is_set() and ok:
            print(f"gpt2tune: {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

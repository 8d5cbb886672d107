"""Chunks of work spread over the cores this process may use: forked worker processes, results in order."""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
from typing import Callable, Iterable, Iterator, TypeVar

from gpt2tune.threads import usable_cpus

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may use (its CPU affinity: `taskset -c 1` gives 1)."""
    return len(usable_cpus())


def ordered_map(func: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """func(item) for each item, in order, on `workers` forked processes (default: cores(); 1 runs here, and so
    does a single item).

    func must be a module-level function; what it reads from module globals set before the call is inherited by
    the workers. At most two items a worker are in flight, so memory stays bounded however many items come."""
    workers = workers or cores()
    items = iter(items)
    first = list(itertools.islice(items, 2))
    if len(first) < 2:  # one item: starting the workers would cost more (0.1 s) than they could share
        yield from map(func, first)
        return
    items = itertools.chain(first, items)
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(func, items)
        return
    env = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism (and forked Rust threads hang)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pending: collections.deque = collections.deque()
            for item in items:
                pending.append(pool.apply_async(func, (item,)))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        if env is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = env

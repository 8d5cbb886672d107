"""data/workers.py: results in the order of the items, whether one process or several do the work."""

from __future__ import annotations

import os

from gpt2tune.data.workers import ordered_map


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_ordered_map_keeps_order_on_forked_workers():
    out = list(ordered_map(_square_and_pid, range(50), workers=2))
    assert [v for v, _ in out] == [x * x for x in range(50)]
    assert {pid for _, pid in out} != {os.getpid()}  # the work ran in worker processes


def test_ordered_map_with_one_worker_runs_here():
    out = list(ordered_map(_square_and_pid, range(5), workers=1))
    assert out == [(x * x, os.getpid()) for x in range(5)]


def test_ordered_map_runs_a_single_item_here():
    """Forking workers for one item costs more than the item (a small corpus is one chunk of text)."""
    assert list(ordered_map(_square_and_pid, [7], workers=2)) == [(49, os.getpid())]
    assert list(ordered_map(_square_and_pid, iter([]), workers=2)) == []
    out = list(ordered_map(_square_and_pid, iter(range(3)), workers=2))  # a generator: nothing lost by the peek
    assert [v for v, _ in out] == [0, 1, 4] and {pid for _, pid in out} != {os.getpid()}

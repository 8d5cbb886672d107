"""Checks on a user's input file before it is opened: a FIFO, device or directory is refused, never read."""

from __future__ import annotations

import stat
from pathlib import Path

from .errors import UserError

_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"))


def check_regular_file(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path when it is a regular file (or a link to one); else a UserError saying what it is.

    Opening a FIFO blocks until something writes to it, and a device can be endless: both would hang.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode  # follows symlinks: a link to a regular file is fine
    except FileNotFoundError:
        raise UserError(f"{what} not found: {p}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise UserError(f"{what} {p} is a {kind}, not a regular file; give a file")
    return p


def is_text(value: str) -> bool:
    """True when `value` is valid Unicode text (no lone surrogate, as non-UTF-8 bytes on a command line become)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

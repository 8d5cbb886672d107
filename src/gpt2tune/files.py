"""Files, light on imports (no torch; the corpus commands use it too): checks on a user's input file before it is
opened (a FIFO, device or directory is refused, never read), text decoded as the user wrote it (binaries refused,
UTF-8 with a clear error), output paths checked before slow work, writes that never leave a half-written file
under its final name, and a file's content digest."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from pathlib import Path

from gpt2tune.errors import UserError

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


def check_not_binary(p: Path, raw: bytes) -> None:
    """A file with NUL bytes is not text: say so instead of decoding garbage."""
    if b"\x00" in raw[:65536]:
        raise UserError(f"{p} looks like a binary file, not text (it holds NUL bytes)")


def decode_text(p: Path, raw: bytes) -> str:
    """A text file's bytes as str (UTF-8, BOM allowed), or a UserError naming the first bad byte and line."""
    check_not_binary(p, raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{p} is not UTF-8 text (bad byte 0x{raw[e.start]:02x} on line {line}); "
                        "re-save it as UTF-8") from None


def check_makeable(path: str | Path, option: str, file: bool = False) -> None:
    """UserError naming `option` unless directory `path` (or, with `file`, file `path`) exists or could be made."""
    p = Path(path)
    if file:
        if p.is_symlink() and not p.exists():
            raise UserError(f"{option} {p} is a symbolic link to {os.readlink(p)}, which does not exist")
        if p.is_dir():
            raise UserError(f"{option} {p} is a directory; give a file name")
    start = p.parent if file else p
    for q in (start, *start.parents):
        where = f"{option} {p}" + ("" if q == p else f" can't be made: {q}")
        if q.is_symlink() and not q.exists():
            raise UserError(f"{where} is a symbolic link to {os.readlink(q)}, which does not exist")
        if q.exists():
            if not q.is_dir():
                raise UserError(f"{where} is a file, not a directory")
            if not os.access(q, os.W_OK | os.X_OK):
                raise UserError(f"{where} is not writable")
            return


def make_dir(path: str | Path, option: str) -> Path:
    """Make directory `path` (and its parents); a failure is one line naming `option`."""
    p = Path(path)
    check_makeable(p, option)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{option} {p} can't be made ({e.strerror or e})") from None
    return p


def atomic_write(path: str | Path, content: str | bytes) -> Path:
    """Write `content` to a temporary sibling, flush it to disk, then rename it to `path`.

    On any failure (a full disk) the temporary file is removed, `path` keeps its old content, and the error is
    one line naming the file.
    """
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # a full disk may only show here (delayed allocation)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({e.strerror or e}); it was left as it was") from None
    return path


def digest(path: str | Path) -> str:
    """The SHA-256 of a file's content, computed once per process for the same file unchanged (same inode, size
    and modification time): the data cache and the resume check ask for the same corpus's digest."""
    st = os.stat(path)
    return _digest(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()

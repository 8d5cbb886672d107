"""Text files as the user wrote them: refuse binaries, decode UTF-8 with a clear error (no torch, for `corpus`)."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


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

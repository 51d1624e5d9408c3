"""Percent-decoding of URL paths for display and grouping.

A path is decoded exactly once, so "%2520" becomes "%20" and never " ". An
escape that is not two hex digits, or bytes that are not valid UTF-8, stay as
they were sent, and the valid escapes around them are still decoded. Escapes
of ASCII control characters (%00 to %1F and %7F) stay encoded too, because
PostgreSQL rejects NUL in text and a tab or newline would split log lines and
CSV exports. Decoding never raises, because a client controls every byte of
the path.
"""

from __future__ import annotations

import re

# A run of consecutive escapes is decoded as one byte string, so a multi-byte
# UTF-8 character split over several escapes ("%C3%A9") decodes as a whole.
_ESCAPE_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")

_ESCAPE_CHARS = 3
_SURROGATE_ESCAPE_FIRST = 0xDC80
_SURROGATE_ESCAPE_LAST = 0xDCFF


def decode_path(path: str) -> str:
    """Percent-decode a path once, keeping invalid escapes, invalid UTF-8 and control characters as sent.

    "/caf%C3%A9" becomes "/café" and "/a%2520b" becomes "/a%20b". "%zz", a
    truncated sequence such as "%E2%82", an encoded surrogate and "%00" stay
    as they are, with their original letter case. Never raises.
    """
    if "%" not in path:
        return path
    return _ESCAPE_RUN.sub(_decode_run, path)


def _decode_run(match: re.Match[str]) -> str:
    escapes = match.group()
    raw = bytes.fromhex(escapes.replace("%", ""))
    decoded = raw.decode("utf-8", errors="surrogateescape")
    if not any(_is_kept_encoded(char) for char in decoded):
        return decoded

    # surrogateescape turns each byte that is not part of valid UTF-8 into one
    # surrogate, and each valid character consumes len(char.encode()) bytes, so
    # walking both in step finds the escape text of every kept byte. Kept
    # characters are all one byte long.
    parts: list[str] = []
    byte_index = 0
    for char in decoded:
        if _is_kept_encoded(char):
            start = byte_index * _ESCAPE_CHARS
            parts.append(escapes[start : start + _ESCAPE_CHARS])
            byte_index += 1
        else:
            parts.append(char)
            byte_index += len(char.encode("utf-8"))
    return "".join(parts)


def _is_kept_encoded(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or code == 0x7F or _SURROGATE_ESCAPE_FIRST <= code <= _SURROGATE_ESCAPE_LAST

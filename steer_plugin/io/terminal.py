"""Text from files (vector metadata, results JSON, stats metadata, file names) is data, not terminal input.

A crafted ``emotion`` field with ESC sequences could recolour or rewrite the terminal, NUL and newlines
break tables and one-line errors. Everything we print that came from a file goes through ``printable``.
"""

from __future__ import annotations

# bidirectional overrides and isolates: they reorder what is shown ("Trojan Source")
_BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _unsafe(ch: str, allow_newlines: bool) -> bool:
    code = ord(ch)
    if allow_newlines and ch == "\n":
        return False
    # C0 controls, DEL, C1 controls, line/paragraph separators, bidi controls
    return code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029) or code in _BIDI


def printable(value: object, *, allow_newlines: bool = False) -> str:
    """``str(value)`` with control characters shown as escapes (``\\x1b``, ``\\n``, ``\\x00``, ...)."""
    text = str(value)
    if not any(_unsafe(ch, allow_newlines) for ch in text):
        return text
    return "".join(_escape(ch) if _unsafe(ch, allow_newlines) else ch for ch in text)

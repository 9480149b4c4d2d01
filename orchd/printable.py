"""Showing text that orchd did not write (a run's output) without letting it act on the reader.

A run may print anything: a bell, a carriage return that overwrites what came before, an escape
sequence that recolours or retitles the terminal, a bidi override that reorders a line.  Written
to a terminal as is, such bytes change what a person sees; written to a log line, they break it.
Control characters are therefore shown as C-style escapes, as journalctl does (``\\a``, ``\\r``,
``\\x1b``, ``\\u202e``); a tab stays a tab.
"""

from __future__ import annotations

_NAMED = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\v": "\\v"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_nonprintable(text: str) -> str:
    """``text`` with every non-printable character but the tab as an escape; unchanged (the same
    object) when there is none, which is almost always."""
    if text.isprintable() or all(c.isprintable() or c == "\t" for c in text):
        return text
    return "".join(c if c.isprintable() or c == "\t" else _escape(c) for c in text)

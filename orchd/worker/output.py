"""Capture of a run's output with bounded memory and storage: the head is kept line by line as it
arrives, then only a rolling tail, and what fell in between is counted and reported in one line.

A run printing 100 MB therefore costs at most ``max_bytes`` of memory and storage and a few
thousand rows, and a person still sees how it started and how it ended.  Past the head, output
is handled as raw blocks (bytes.count and slicing, no per-line Python work), so even gigabytes
cost little more than reading them.

A run may print any bytes, but a database text column holds only text, and PostgreSQL's none
with a NUL in it: each line is stored by ``encode_line`` (see there), losslessly and the same way
on both databases, so what a run prints can never fail the INSERT that would kill its worker.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Line:
    at: datetime
    stream: str
    text: str


@dataclass
class OutputCapture:
    max_bytes: int
    head_used: int = 0
    tail_bytes: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0
    #: (arrival time, stream, block of complete lines ending in a newline)
    tail: deque[tuple[datetime, str, bytes]] = field(default_factory=deque)
    _partial: dict[str, bytes] = field(default_factory=dict)

    @property
    def head_budget(self) -> int:
        return self.max_bytes // 2

    @property
    def tail_budget(self) -> int:
        return self.max_bytes - self.head_budget

    def feed(self, stream: str, chunk: bytes) -> list[Line]:
        """Accept raw bytes of one stream; return the complete lines to store now (the head)."""
        data = self._partial.pop(stream, b"") + chunk
        cut = data.rfind(b"\n") + 1
        complete, rest = data[:cut], data[cut:]
        while len(rest) > MAX_LINE:  # a line without newline cannot grow without bound
            complete += rest[:MAX_LINE] + b"\n"
            rest = rest[MAX_LINE:]
        if rest:
            self._partial[stream] = rest
        return self._accept(stream, complete)

    def close(self) -> list[Line]:
        """End of output: unterminated last lines, the dropped-output marker, then the tail."""
        kept = []
        for stream, rest in sorted(self._partial.items()):
            kept += self._accept(stream, rest + b"\n")
        self._partial.clear()
        if self.dropped_lines:
            kept.append(
                Line(
                    datetime.now(UTC),
                    "orchd",
                    f"[orchd: {self.dropped_lines} lines ({self.dropped_bytes} bytes) of output dropped "
                    f"between head and tail; cap {self.max_bytes} bytes per run]",
                )
            )
        for at, stream, block in self.tail:
            kept += [_decode(at, stream, raw) for raw in block[:-1].split(b"\n")]
        self.tail.clear()
        return kept

    def _accept(self, stream: str, block: bytes) -> list[Line]:
        if not block:
            return []
        now = datetime.now(UTC)
        kept = []
        pos = 0
        while not self.tail and pos < len(block):
            end = block.index(b"\n", pos) + 1
            if self.head_used + end - pos > self.head_budget:
                break
            kept.append(_decode(now, stream, block[pos : end - 1]))
            self.head_used += end - pos
            pos = end
        if pos < len(block):
            self.tail.append((now, stream, block[pos:]))
            self.tail_bytes += len(block) - pos
            self._trim()
        return kept

    def _trim(self) -> None:
        """Drop whole lines from the front of the tail until it fits its budget."""
        while self.tail_bytes > self.tail_budget:
            at, stream, block = self.tail[0]
            excess = self.tail_bytes - self.tail_budget
            cut = len(block) if len(block) <= excess else block.index(b"\n", excess - 1) + 1
            if cut == len(block):
                self.tail.popleft()
            else:
                self.tail[0] = (at, stream, block[cut:])
            self.tail_bytes -= cut
            self.dropped_lines += block.count(b"\n", 0, cut)
            self.dropped_bytes += cut


def _decode(at: datetime, stream: str, raw: bytes) -> Line:
    return Line(at, stream, encode_line(raw[:-1] if raw.endswith(b"\r") else raw))


#: A byte to escape (NUL, or one that is not part of valid UTF-8, as surrogateescape decodes it) or
#: a literal "xHH", each with the backslashes right before it.
_TO_ESCAPE = re.compile("(\\\\*)([\x00\udc80-\udcff]|x[0-9A-Fa-f]{2})")
_ESCAPED = re.compile(r"(\\+)(x[0-9A-Fa-f]{2})")


def encode_line(raw: bytes) -> str:
    """One line of output as text for the database, losslessly and the same on both databases.

    Valid UTF-8 is kept as it is, control characters included.  A NUL byte, and each byte that
    is not part of valid UTF-8, becomes the four characters ``\\xNN`` (hex).  So that the text
    ``\\x41`` a run printed is not read back as the byte 0x41, the backslashes right before a
    literal ``xNN`` are doubled; no other backslash is touched.  ``decode_line`` inverts it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="surrogateescape")
    else:
        if "\x00" not in text and "\\" not in text:
            return text  # the common case: nothing to do
    return _TO_ESCAPE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    backslashes, what = match.groups()
    if len(what) == 1:  # a byte: NUL, or an undecodable one (U+DC80..U+DCFF stands for 0x80..0xFF)
        code = ord(what)
        return f"{backslashes * 2}\\x{code - 0xDC00 if code >= 0xDC00 else code:02x}"
    return backslashes * 2 + what


def decode_line(text: str) -> bytes:
    """The bytes a run printed, from a line stored by ``encode_line``."""

    def unescape(match: re.Match[str]) -> str:
        backslashes, hexa = match.groups()
        kept = "\\" * (len(backslashes) // 2)
        if len(backslashes) % 2 == 0:
            return kept + hexa
        code = int(hexa[1:], 16)
        return kept + chr(code if code < 0x80 else 0xDC00 + code)

    return _ESCAPED.sub(unescape, text).encode("utf-8", errors="surrogateescape")

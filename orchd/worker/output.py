"""Capture of a run's output with bounded memory and storage: the head is kept as it arrives, then
only a rolling tail, and what fell in between is counted and reported in one marker line.

A run printing 100 MB therefore costs at most ``max_bytes`` (plus one tail of the same size
in memory) and a few thousand rows, and a person still sees how it started and how it ended.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Line:
    at: datetime
    stream: str
    text: str
    size: int = 0


@dataclass
class OutputCapture:
    max_bytes: int
    head_used: int = 0
    tail_bytes: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0
    tail: deque[Line] = field(default_factory=deque)
    _partial: dict[str, bytes] = field(default_factory=dict)

    @property
    def head_budget(self) -> int:
        return self.max_bytes // 2

    def feed(self, stream: str, chunk: bytes) -> list[Line]:
        """Accept raw bytes of one stream; return the complete lines to store now (the head)."""
        data = self._partial.pop(stream, b"") + chunk
        *complete, rest = data.split(b"\n")
        while len(rest) > MAX_LINE:  # a line without newline cannot grow without bound
            complete.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if rest:
            self._partial[stream] = rest
        return self._accept(stream, complete)

    def close(self) -> list[Line]:
        """End of output: unterminated last lines, the dropped-output marker, then the tail."""
        kept = []
        for stream, rest in sorted(self._partial.items()):
            kept += self._accept(stream, [rest])
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
        kept.extend(self.tail)
        self.tail.clear()
        return kept

    def _accept(self, stream: str, raw_lines: list[bytes]) -> list[Line]:
        now = datetime.now(UTC)
        kept = []
        for raw in raw_lines:
            size = len(raw) + 1
            line = Line(now, stream, raw.decode("utf-8", errors="replace").rstrip("\r"), size)
            if self.head_used + size <= self.head_budget and not self.tail:
                self.head_used += size
                kept.append(line)
                continue
            self.tail.append(line)
            self.tail_bytes += size
            while self.tail_bytes > self.max_bytes - self.head_budget and len(self.tail) > 1:
                old = self.tail.popleft()
                self.tail_bytes -= old.size
                self.dropped_lines += 1
                self.dropped_bytes += old.size
        return kept

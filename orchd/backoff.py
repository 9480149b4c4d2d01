"""Exponential backoff: how long a daemon waits before trying the database (or any resource that
keeps failing) again.  One rule for every daemon, so an outage is retried the same way and
reads the same in every log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Each failure waits ``factor`` times longer than the last, from ``initial`` up to ``maximum``;
    a success starts over.  ``delay`` is 0 while things work."""

    initial: float
    maximum: float
    factor: float = 2.0
    delay: float = 0.0

    def failed(self) -> float:
        """Record a failure; return how long to wait before the next try."""
        self.delay = min(self.maximum, max(self.initial, self.delay * self.factor))
        return self.delay

    def succeeded(self) -> bool:
        """Record a success; True when it ends a run of failures (worth saying so once)."""
        was_failing, self.delay = self.delay > 0, 0.0
        return was_failing

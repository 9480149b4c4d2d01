"""Waiting for a fleet to drain: slow is not stuck.

A drain used to wait a fixed time: a fleet working through a large backlog at its own pace (the
scale bench's 5,000-run burst on a loaded machine) was reported as a violation although every run
was finishing, while a truly stuck queue was found only after the same fixed wait.  Here the
drain waits as long as it moves: ``outstanding`` (how many things are left, say runs due or
running) must reach a new low within ``stall`` seconds of the last one, or the queue is stuck.
A count that goes up and down without ever getting lower (runs retried and failing forever) is
not progress, so the wait is bounded: at most one ``stall`` per thing that was outstanding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Settled:
    """How a wait ended: ``left`` is the last count seen (None: never answered), 0 when done."""

    done: bool
    left: int | None
    waited: float
    #: Seconds since the count last reached a new low (how long it stood still at the end).
    still: float


def wait_settled(
    outstanding: Callable[[], int | None],
    stall: float,
    *,
    tend: Callable[[], None] = lambda: None,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Settled:
    """Poll ``outstanding`` (None: could not tell, e.g. the database is restarting: no progress)
    every ``interval`` seconds, calling ``tend`` before each look, until it is 0 (done) or has
    not reached a new low for ``stall`` seconds (stuck)."""
    began = progressed = clock()
    lowest: int | None = None
    left: int | None = None
    while True:
        tend()
        left = outstanding()
        now = clock()
        if left == 0:
            return Settled(True, 0, now - began, 0.0)
        if left is not None and (lowest is None or left < lowest):
            lowest, progressed = left, now
        if now - progressed >= stall:
            return Settled(False, left, now - began, now - progressed)
        sleep(interval)

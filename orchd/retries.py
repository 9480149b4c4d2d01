"""Retry policy: how long a failed attempt waits before the next one."""

from __future__ import annotations

import math
import random

MAX_DELAY = 86400.0
JITTER = 0.1


def retry_delay(base: float, backoff: float, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: base * backoff^(attempt-1), +-10% jitter so runs that
    failed together (a database blip, a dead host) do not all retry in the same instant."""
    # in logarithms: 2.0 ** 1100 does not fit a float (OverflowError), and the cap is reached long before
    delay = 0.0
    if base > 0:
        log_delay = math.log(base) + max(0, attempt - 1) * math.log(max(backoff, 1.0))
        delay = MAX_DELAY if log_delay >= math.log(MAX_DELAY) else math.exp(log_delay)
    spread = (rng or random).uniform(-JITTER, JITTER)
    return max(0.0, delay * (1 + spread))

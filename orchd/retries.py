"""Retry policy: how long a failed attempt waits before the next one."""

from __future__ import annotations

import random

MAX_DELAY = 86400.0
JITTER = 0.1


def retry_delay(base: float, backoff: float, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: base * backoff^(attempt-1), +-10% jitter so runs that
    failed together (a database blip, a dead host) do not all retry in the same instant."""
    delay = min(MAX_DELAY, base * backoff ** max(0, attempt - 1))
    spread = (rng or random).uniform(-JITTER, JITTER)
    return max(0.0, delay * (1 + spread))

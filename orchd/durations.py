"""Human durations ("30s", "5m", "1h30m", "7d") as used throughout the config and CLI.

Kept tiny and separate because both the config loader and the schedule module read them,
and a value like "90" (bare seconds) must mean the same everywhere.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Return seconds for a duration string such as "30s", "5m", "2h", "1h30m" or a bare number.

    Raises ValueError with a message fit to show a user.
    """
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "30s", "5m", "2h", got {value!r}')
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):  # TOML has nan and inf
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f'expected a duration like "30s", "5m", "2h", got {value!r}')
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f'expected a duration like "30s", "5m", "2h", "7d", got {value!r}')
    return total


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration for display: 90 -> "1m30s"."""
    if seconds < 1 and seconds > 0:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def duration_text(seconds: float) -> str:
    """The exact duration as the config writes it, in its largest whole units: 60 -> "1m",
    5400 -> "1h30m", 0.25 -> "250ms"; parse_duration reads it back to the same value."""
    millis = round(seconds * 1000)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if millis >= size:
            parts.append(f"{millis // size}{unit}")
            millis %= size
    return "".join(parts) or "0s"

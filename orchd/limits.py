"""What a value must be to survive every place it goes: both databases and the datetime arithmetic.

A config that validates must never crash a daemon later, so each number, duration and instant is
checked against the narrowest of the places it reaches: a PostgreSQL ``integer`` column (SQLite
takes 64 bits), ``datetime`` (years 1 to 9999), ``timedelta`` and a float.  Parameters end up
as JSON in a database column and in a run's environment, so they must be JSON: TOML's date-times
become ISO 8601 strings, and NaN and the infinities (not JSON) are refused.  A NUL character is
refused in every string, since no PostgreSQL text can hold one and no argv or environment either.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time
from typing import Any

#: A PostgreSQL ``integer`` column.
INT32_MAX = 2**31 - 1
#: Years of a schedule's instants (``at``, ``anchor``, an rrule's DTSTART): far from datetime's
#: ends (1 and 9999), so adding a horizon, a jitter or a time zone offset never overflows.
EARLIEST_YEAR, LATEST_YEAR = 1900, 9000


def check_year(value: datetime, what: str) -> datetime:
    """``value`` if its year is in range (checked before any time zone arithmetic), else ValueError."""
    if not EARLIEST_YEAR <= value.year < LATEST_YEAR:
        raise ValueError(
            f"{what}: expected a date-time between {EARLIEST_YEAR} and {LATEST_YEAR}, got {value.isoformat()}"
        )
    return value


def json_safe(value: Any, where: str = "") -> Any:
    """``value`` as it will be stored and handed to a run: TOML date-times as ISO 8601 strings;
    ValueError for what JSON or the databases cannot hold (NaN, infinities, NUL)."""
    if isinstance(value, dict):
        return {_text(k, where): json_safe(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where or 'value'}: {value} is not a JSON number (JSON has no NaN or infinity)")
    if isinstance(value, str):
        return _text(value, where)
    return value


def _text(value: str, where: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{where or 'value'}: a NUL character (\\u0000) cannot be stored or passed on")
    return value


def nul_path(data: Any, path: str = "") -> str | None:
    """The dotted path of the first key or string holding a NUL character in parsed TOML, or None."""
    if isinstance(data, str):
        return path if "\x00" in data else None
    items: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            inner = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return inner
            items.append((inner, value))
    elif isinstance(data, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(data)]
    for inner, value in items:
        if (found := nul_path(value, inner)) is not None:
            return found
    return None

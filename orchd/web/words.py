"""Schedules and durations in words for people ("every 15 min", "02:30 Europe/Berlin on weekdays").

Pure functions of a ``ScheduleSpec``; what they cannot say simply falls back to the expression
itself, which is never wrong.
"""

from __future__ import annotations

import re

from orchd.durations import parse_duration
from orchd.schedules import ScheduleSpec

_UNITS = ((86400, "day"), (3600, "h"), (60, "min"), (1, "s"))
_DAYS = ["Sundays", "Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays"]
_DAY_NAMES = {n: i for i, n in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def every(seconds: float) -> str:
    """'every 15 min', 'every hour', 'every 2 h', 'every 90 s', 'every day'."""
    for size, unit in _UNITS:
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            if unit == "day":
                return "every day" if count == 1 else f"every {count} days"
            return "every hour" if count == 1 and unit == "h" else f"every {count} {unit}"
    return f"every {seconds:g} s"


def _day_set(field: str) -> set[int] | None:
    days: set[int] = set()
    for part in field.lower().split(","):
        bounds = part.split("-")
        if len(bounds) > 2 or not all(b in _DAY_NAMES or b.isdigit() for b in bounds):
            return None
        numbers = [(_DAY_NAMES[b] if b in _DAY_NAMES else int(b)) % 7 for b in bounds]
        if len(numbers) == 2 and numbers[1] < numbers[0]:
            numbers[1] += 7
        days |= {d % 7 for d in range(numbers[0], numbers[-1] + 1)}
    return days


def _days(field: str) -> str | None:
    if field == "*":
        return ""
    days = _day_set(field)
    if days is None:
        return None
    if days == {1, 2, 3, 4, 5}:
        return " on weekdays"
    if days == {0, 6}:
        return " on weekends"
    return " on " + ", ".join(_DAYS[d] for d in sorted(days))


def _cron(expr: str) -> str | None:
    fields = expr.split()
    second = "0"
    if len(fields) == 6:
        second, fields = fields[0], fields[1:]
    if len(fields) != 5:
        return None
    minute, hour, dom, month, dow = fields
    step = re.fullmatch(r"\*/(\d+)", second)
    if step and fields == ["*"] * 5:
        return every(int(step.group(1)))
    if second == "*" and fields == ["*"] * 5:
        return "every second"
    if not second.isdigit():
        return None
    if (step := re.fullmatch(r"\*/(\d+)", minute)) and hour == dom == month == dow == "*":
        return every(60 * int(step.group(1)))
    if minute == "*" and hour == dom == month == dow == "*":
        return "every minute"
    if not minute.isdigit():
        return None
    days = _days(dow)
    if days is None:
        return None
    if hour == "*":
        when = f"every hour at :{int(minute):02d}"
    elif hour.isdigit():
        when = f"{int(hour):02d}:{int(minute):02d}" + (f":{int(second):02d}" if int(second) else "")
    else:
        return None
    if dom != "*":
        if not dom.isdigit():
            return None
        when += f" on day {int(dom)} of the month" + (" and" if days else "")
    if month != "*":
        if not month.isdigit() or not 1 <= int(month) <= 12:
            return None
        when += f" in {_MONTHS[int(month) - 1]}"
    return when + days


def describe(spec: ScheduleSpec) -> str:
    """The schedule in words, with its timezone when it is not UTC."""
    zone = "" if spec.timezone == "UTC" else f" {spec.timezone}"
    if spec.kind == "interval":
        text = every(parse_duration(spec.expr))
    elif spec.kind == "at":
        return f"once, at {spec.expr}{zone}"
    elif spec.kind == "cron":
        said = _cron(spec.expr)
        if said is None:
            return f"cron {spec.expr}{zone}"
        if said.startswith("every"):
            return said
        first, _, rest = said.partition(" ")
        return f"{first}{zone}{' ' + rest if rest else ''}"
    else:
        text = f"rrule {spec.expr}"
    return text + (f" ({spec.timezone})" if zone and spec.kind != "interval" else "")

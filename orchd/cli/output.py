"""How commands print: aligned tables and local times with their age for people, JSON for scripts.

Colour is added with click.style and removed by click.echo whenever the output is not a terminal
(a pipe, a file, a test), and never added when NO_COLOR is set (https://no-color.org).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

import click

from orchd.durations import format_duration
from orchd.printable import escape_nonprintable

_STATE_COLOURS = {
    "COMPLETED": "green",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "CRASHED": "red",
    "RUNNING": "cyan",
    "PENDING": "cyan",
    "CANCELLING": "yellow",
    "CANCELLED": "yellow",
    "MISSED": "yellow",
}


def iso(value: datetime | None) -> str | None:
    """The JSON form of a time: ISO 8601 in UTC with its offset."""
    return value.astimezone(UTC).isoformat() if value else None


def age(value: datetime, now: datetime | None = None) -> str:
    """'12s ago' / 'in 4m': the largest whole unit."""
    delta = (value - (now or datetime.now(UTC))).total_seconds()
    size = abs(delta)
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if size >= secs or unit == "s":
            amount = f"{int(size // secs)}{unit}"
            break
    return f"in {amount}" if delta > 0 else f"{amount} ago"


def local(value: datetime, zone: tzinfo | None = None, now: datetime | None = None) -> str:
    """A time on the local clock (or ``zone``'s), without the date when it is today."""
    here = value.astimezone(zone)
    today = (now or datetime.now(UTC)).astimezone(zone).date()
    return here.strftime("%H:%M:%S" if here.date() == today else "%Y-%m-%d %H:%M:%S")


def exact(value: datetime, zone: tzinfo | None = None) -> str:
    """'2026-12-04 18:53:39 CET (UTC+01:00)': the date, and the zone the time is told in, for a
    time shown short (its zone is the one of that date: summer time included)."""
    here = value.astimezone(zone)
    offset = here.strftime("%z")
    name = here.tzname() or ""
    told = f"{here:%Y-%m-%d %H:%M:%S} {name}".rstrip()
    return told if name == "UTC" else f"{told} (UTC{offset[:3]}:{offset[3:]})"


def relative(value: datetime | None, now: datetime | None = None) -> str:
    """'14:02:10 (12s ago)' for tables; '-' for no time."""
    if value is None:
        return "-"
    return f"{local(value, now=now)} ({age(value, now)})"


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str | None:
    """How long a run took, or has been running."""
    if start is None:
        return None
    return format_duration(((end or now or datetime.now(UTC)) - start).total_seconds())


def coloured(state: str) -> str:
    colour = _STATE_COLOURS.get(state)
    if colour is None or os.environ.get("NO_COLOR"):
        return state
    return click.style(state, fg=colour, bold=True if colour == "red" else None)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; cells may be styled (their colour does not count)."""
    # a cell spanning lines (an rrule with its DTSTART) would break the columns: one line each
    cells = [[("-" if c is None else " ".join(str(c).splitlines())) for c in row] for row in rows]
    widths = [max([len(h), *(len(click.unstyle(r[i])) for r in cells)]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        padded = (c + " " * (w - len(click.unstyle(c))) for c, w in zip(row, widths, strict=True))
        return "  ".join(padded).rstrip()

    click.echo(line(headers))
    for row in cells:
        click.echo(line(row))


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """'label:  value' lines, aligned, for one object."""
    width = max(len(label) for label, _ in pairs) + 2
    for label, value in pairs:
        click.echo(f"{label + ':':<{width}}{'-' if value is None else value}")


def plural(count: int, noun: str) -> str:
    """'1 line', '2 lines', '0 lines'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def echo_output(text: str, err: bool = False, raw: bool = False) -> None:
    """Write a line a run printed: escaped on a terminal unless ``raw``; to a pipe or a file
    exactly as the run wrote it (click would otherwise strip its colour codes)."""
    stream = sys.stderr if err else sys.stdout
    if not raw and stream.isatty():
        text = escape_nonprintable(text)
    click.echo(text, err=err, color=True)

"""Command-line values that need more than a type: times, KEY=VALUE parameters, JSON objects.

They are click parameter types so a bad value is a usage error (exit 2) raised while the command
line is parsed, before anything is read or written.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click

from orchd.config.fields import Bounded
from orchd.durations import parse_duration
from orchd.limits import EARLIEST_YEAR, INT32_MAX, LATEST_YEAR, json_safe

TIME_HELP = "ISO 8601 (2026-05-01T14:00, local time unless an offset is given), 'now', or a duration"
#: A run id: the database's 64-bit id (a larger number used to overflow the driver).
RUN_ID = click.IntRange(1, 2**63 - 1)
ATTEMPT = click.IntRange(1, INT32_MAX)


class When(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """A point in time: ISO 8601 (a time without offset is local time, a date is its midnight),
    ``now``, or a duration from now, counted back for ``past`` options (``--since 1h``) and
    forward for the others (``--at 10m``); a leading ``-`` or ``+`` says which way explicitly."""

    name = "TIME"

    def __init__(self, past: bool) -> None:
        self.past = past

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        now = datetime.now(UTC)
        if text.lower() == "now":
            return now
        sign = -1 if self.past else 1
        if text.startswith(("+", "-")):
            sign, text = (1 if text[0] == "+" else -1), text[1:]
        try:
            seconds: float | None = parse_duration(text)
        except ValueError:
            seconds = None
        if seconds is not None:
            try:
                parsed = now + sign * timedelta(seconds=seconds)
            except OverflowError:
                parsed = datetime.min  # out of range: said below
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                example = "1h for an hour ago" if self.past else "10m for in ten minutes"
                self.fail(f"{value!r} is not a time: use {TIME_HELP} ({example})", param, ctx)
        # the range of the config's instants, so no arithmetic on it can overflow later
        if not EARLIEST_YEAR <= parsed.year < LATEST_YEAR:
            self.fail(f"{value!r}: expected a time between {EARLIEST_YEAR} and {LATEST_YEAR}", param, ctx)
        return parsed.astimezone(UTC)


class KeyValue(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """``KEY=VALUE``: the value is read as JSON when it is JSON (7, true, [1, 2], "7"), else as text."""

    name = "KEY=VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, sep, raw = str(value).partition("=")
        if not sep or not key.strip():
            self.fail(f"{value!r} is not KEY=VALUE (e.g. --param days=7)", param, ctx)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return key.strip(), _storable(parsed, lambda message: self.fail(message, param, ctx))


class JsonObject(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            self.fail(f"not JSON: {exc}", param, ctx)
        if not isinstance(parsed, dict):
            self.fail(f"expected a JSON object like '{{\"days\": 7}}', got {value!r}", param, ctx)
        return dict(_storable(parsed, lambda message: self.fail(message, param, ctx)))


def _storable(value: Any, fail: Callable[[str], NoReturn]) -> Any:
    """A parameter value the databases store and a run receives as JSON: NaN and infinities (which
    Python's json reads) and NUL characters are refused, as in the config."""
    try:
        return json_safe(value)
    except ValueError as exc:
        fail(str(exc))


class Setting(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """A value checked by a config key's own parser (and range), so the command line accepts exactly
    what the config file does: ``--limit`` of a pool as ``pools[].concurrency_limit``."""

    def __init__(self, parser: Callable[[Any], Any], name: str) -> None:
        self.parser, self.name = parser, name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        raw = value
        if isinstance(self.parser, Bounded) and self.parser.kind == "integer" and isinstance(value, str):
            with contextlib.suppress(ValueError):
                raw = int(value)
        try:
            return self.parser(raw)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """A duration as in the config: "30s", "5m", "2h", "1h30m"; returned in seconds (at most 100
    years, so adding it to a time cannot overflow)."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return float(_LONGEST(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_LONGEST = Bounded("duration", 0.0, 36500 * 86400.0)

"""Typed setting declarations: each config key is a dataclass field carrying its parser and doc.

Declaring default, parser and description on the field itself keeps the key list, the validation
and the documentation (``orchd config init``, README) from drifting apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from orchd.durations import duration_text, parse_duration
from orchd.limits import INT32_MAX, json_safe

T = TypeVar("T")
Parser = Callable[[Any], Any]


def setting(default: Any, parser: Parser, doc: str, *, as_text: bool = False) -> Any:
    """A config key: its default, the function that validates a raw TOML value, and what it means.
    A text key (``text``, or ``as_text``) takes an environment override or a `config set` value as
    written: ORCHD_WORKER_NAME=42 is the name "42", not a TOML integer."""
    meta = {"parser": parser, "doc": doc, "text": as_text or parser is text}
    if isinstance(default, list | dict):
        factory = default.copy
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def typed(fd: dataclasses.Field[Any], text: str) -> Any:
    """A value typed as text for key ``fd`` (an environment override, `orchd config set`): a TOML
    literal when it is one (8, true, ["a"]) unless it is a text key, else the text as written;
    the key's parser validates it next, as it does a value read from the file."""
    if not fd.metadata["text"]:
        with contextlib.suppress(tomllib.TOMLDecodeError):
            return tomllib.loads(f"v = {text}")["v"]
    return text


def parser_of(cls: type, name: str) -> Parser:
    """The parser of a key, for a command-line option that takes the same values."""
    parser: Parser = next(fd for fd in dataclasses.fields(cls) if fd.name == name).metadata["parser"]
    return parser


def default(fd: dataclasses.Field[Any]) -> Any:
    """The declared default of a field as written in TOML (e.g. "10s"), before parsing."""
    return fd.default_factory() if fd.default_factory is not dataclasses.MISSING else fd.default


def parsed_defaults(cls: type) -> dict[str, Any]:
    """Each key of a config section (a dataclass of settings) and its default, parsed: the value
    an absent key has, for code that reads stored settings back (e.g. a deployment's JSON spec)."""
    return {fd.name: fd.metadata["parser"](default(fd)) for fd in dataclasses.fields(cls)}


def _kind(value: object) -> str:
    return type(value).__name__ if not isinstance(value, str) else f"the string {value!r}"


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


@dataclass(frozen=True)
class Bounded:
    """The parser of a number or duration key, with the range it accepts: chosen so that every value
    in it works everywhere the key goes (a PostgreSQL integer column, ``timedelta``, a sleep), so
    a config that validates cannot crash a daemon later.  ``optional``: 0 (or "") means "none"."""

    kind: Literal["integer", "number", "duration"]
    low: float
    high: float
    optional: bool = False
    #: What "" (or 0) stands for, as the docs say it.
    empty: str = "none"

    def __call__(self, value: Any) -> Any:
        if self.optional and (value is None or value == "" or (value == 0 and not isinstance(value, bool))):
            return None
        if self.kind == "duration":
            try:
                parsed: float = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"{exc}{self._in_range()}") from None
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (self.kind == "integer" and not isinstance(value, int))
        ):
            raise ValueError(f"expected {self.describe()}, got {_kind(value)}")
        else:
            parsed = value
        # TOML has nan and inf; NaN compares false with everything, so it fails the range too
        if (isinstance(parsed, float) and not math.isfinite(parsed)) or not self.low <= parsed <= self.high:
            shown = repr(value) if isinstance(value, str) else value
            raise ValueError(f"expected {self.describe()}, got {shown}")
        return float(parsed) if self.kind != "integer" else int(parsed)

    def describe(self) -> str:
        """What the key accepts, as the docs and the error messages say it."""
        low, high = self.bounds()
        kind = {"integer": "an integer", "number": "a number", "duration": "a duration"}[self.kind]
        text = f"{kind} from {low} to {high}"
        if self.optional:
            text += f' (or "" for {self.empty})' if self.kind == "duration" else f" (or 0 for {self.empty})"
        return text

    def bounds(self) -> tuple[str, str]:
        if self.kind == "duration":
            return duration_text(self.low), duration_text(self.high)
        return _number(self.low), _number(self.high)

    def _in_range(self) -> str:
        low, high = self.bounds()
        return f" (from {low} to {high})"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def integer(low: int, high: int = INT32_MAX) -> Bounded:
    return Bounded("integer", low, high)


def optional_integer(low: int, high: int = INT32_MAX) -> Bounded:
    """An integer, or 0/absent for "no limit"."""
    return Bounded("integer", low, high, optional=True)


def number(low: float, high: float) -> Bounded:
    return Bounded("number", low, high)


def duration(low: str, high: str) -> Bounded:
    return Bounded("duration", parse_duration(low), parse_duration(high))


def optional_duration(low: str, high: str, empty: str = "none") -> Bounded:
    """A duration, or "" / 0 for ``empty`` ("none" unless said)."""
    return Bounded("duration", parse_duration(low), parse_duration(high), optional=True, empty=empty)


def choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(repr(o) for o in options)}, got {_kind(value)}")
        return str(value)

    return parse


def string_list(value: Any) -> list[str]:
    """A list of strings; a comma-separated string is accepted so environment overrides work."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {_kind(value)}")
    return list(value)


def argv(value: Any) -> list[str]:
    """A command as an argv list: run without a shell, so it must not be a single string.
    (Its presence and non-emptiness are checked with entrypoint, its alternative.)"""
    if isinstance(value, str):
        raise ValueError(f'expected an argv list like ["/usr/bin/backup", "--full"], got {_kind(value)}')
    return string_list(value)


def table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table, got {_kind(value)}")
    return dict(value)


def string_table(value: Any) -> dict[str, str]:
    items = table(value)
    for key, item in items.items():
        if not isinstance(item, str):
            raise ValueError(f"expected string values, got {_kind(item)} for {key!r}")
    return items


def size(value: Any) -> str:
    """A byte size as container engines take it: "512m", "2g", "1.5g", "1048576"; "" for none."""
    text_value = text(value).strip().lower()
    if text_value and not re.fullmatch(r"\d+(\.\d+)?[bkmg]?", text_value):
        raise ValueError(f'expected a size like "512m" or "2g", got {_kind(value)}')
    return text_value


def environment(value: Any) -> dict[str, str]:
    """Environment variables: string values, and names the kernel takes (not empty, no '=')."""
    items = string_table(value)
    for key in items:
        if not key or "=" in key:
            raise ValueError(
                f"{key!r} is not an environment variable name (it must be non-empty, without '=')"
            )
    return items


def json_table(value: Any) -> dict[str, Any]:
    """A table stored as JSON (parameters): TOML date-times become ISO 8601 strings; NaN is refused."""
    return dict(json_safe(table(value)))


def raw(value: Any) -> Any:
    """Values validated by their owner (e.g. schedules, parsed by orchd.schedules)."""
    return value


def as_written(fd: dataclasses.Field[Any], value: Any) -> Any:
    """A parsed value as a config file writes it: durations back in their units ("1m", not 60.0),
    "" for an optional one that is off; what its parser reads back to ``value``."""
    parser = fd.metadata["parser"]
    if isinstance(parser, Bounded) and parser.kind == "duration":
        return "" if value is None else duration_text(value)
    return value

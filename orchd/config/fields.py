"""Typed setting declarations: each config key is a dataclass field carrying its parser and doc.

Declaring default, parser and description on the field itself keeps the key list, the validation
and the documentation (``orchd config init``, README) from drifting apart.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

from orchd.durations import duration_text, parse_duration

T = TypeVar("T")
Parser = Callable[[Any], Any]


def setting(default: Any, parser: Parser, doc: str) -> Any:
    """A config key: its default, the function that validates a raw TOML value, and what it means."""
    meta = {"parser": parser, "doc": doc}
    if isinstance(default, list | dict):
        factory = default.copy
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


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


def integer(minimum: int = 0) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer >= {minimum}, got {_kind(value)}")
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def optional_integer(minimum: int = 0) -> Parser:
    """An integer, or 0/absent for "no limit"."""
    inner = integer(minimum)

    def parse(value: Any) -> int | None:
        return None if value is None or (value == 0 and not isinstance(value, bool)) else inner(value)

    return parse


def number(minimum: float = 0.0) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number >= {minimum}, got {_kind(value)}")
        if value < minimum or not math.isfinite(value):  # TOML has nan and inf
            raise ValueError(f"expected a number >= {minimum}, got {value}")
        return float(value)

    return parse


def duration(value: Any) -> float:
    return parse_duration(value)


def optional_duration(value: Any) -> float | None:
    """A duration, or "" / 0 for "none"."""
    if value is None or value == "" or (value == 0 and not isinstance(value, bool)):
        return None
    return parse_duration(value)


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


def raw(value: Any) -> Any:
    """Values validated by their owner (e.g. schedules, parsed by orchd.schedules)."""
    return value


def as_written(fd: dataclasses.Field[Any], value: Any) -> Any:
    """A parsed value as a config file writes it: durations back in their units ("1m", not 60.0),
    "" for an optional one that is off; what its parser reads back to ``value``."""
    if fd.metadata["parser"] is duration:
        return duration_text(value)
    if fd.metadata["parser"] is optional_duration:
        return "" if value is None else duration_text(value)
    return value

"""Durations as written in the config and on the command line."""

from __future__ import annotations

import math

import pytest

from orchd.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d3h4m5s", 2 * 86400 + 3 * 3600 + 4 * 60 + 5.0),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("1.5h", 5400.0),
        (" 30S ", 30.0),
        ("90", 90.0),
        ("0.25", 0.25),
        ("0", 0.0),
        ("0s", 0.0),
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "abc",
        "5 minutes",
        "10min",
        "5x",
        "m5",
        "1h30",
        "30s5",
        "-5s",
        "+5s",
        "1e3",
        "1,5h",
        "5m-",
        -1,
        -0.5,
        math.nan,
        math.inf,
        True,
        False,
        None,
        [30],
        {"s": 30},
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (1, "1s"), (90, "1m30s"), (3600, "1h"), (93784, "1d2h3m4s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds

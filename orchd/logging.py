"""Daemon and CLI logging through structlog, to stderr, in the form the reader needs.

* journald (stderr is the journal stream, ``JOURNAL_STREAM``): one line per event, a syslog
  priority prefix (``<3>`` error ... ``<7>`` debug) so ``journalctl -p warning`` filters, then
  ``event key=value ...``, no timestamp (the journal has one);
* a terminal: structlog's coloured console output;
* anything else (a file, a pipe): logfmt, ``timestamp=2026-05-01T14:02:10.123+02:00 level=info
  event="run started" run_id=42``: every field ``key=value``, a value in double quotes (with
  ``\"``, ``\\`` and C-style escapes of control characters) when it holds a space, ``=``, ``"``
  or anything not printable; ``json`` on request, with the same keys.

Timestamps are ISO 8601 on the local clock with their UTC offset, so lines from hosts in other
zones (or from either side of a DST change) sort and compare without guessing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO, cast

import structlog

from orchd.printable import escape_nonprintable

_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def under_journald(stream: TextIO) -> bool:
    """True when ``stream`` is the journal socket systemd connected (JOURNAL_STREAM=dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = value.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt != "auto":
        return fmt
    if under_journald(stream):
        return "journald"
    return "console" if stream.isatty() else "logfmt"


def _drop_none(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Optional fields (error=, retry=) appear only when they say something."""
    return {k: v for k, v in event.items() if v is not None}


def _timestamp(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """ISO 8601 with milliseconds and the UTC offset: 2026-05-01T14:02:10.123+02:00."""
    event["timestamp"] = datetime.now().astimezone().isoformat(timespec="milliseconds")
    return event


def _journald(_: Any, method: str, event: dict[str, Any]) -> str:
    """``<6>message key=value ...``: journald turns the prefix into the entry's priority."""
    level = event.pop("level", method)
    message = escape_nonprintable(str(event.pop("event", "")))  # a newline would split the entry
    event.pop("timestamp", None)
    fields = _pairs(event)
    return f"<{_PRIORITY.get(level, 6)}>{message}{' ' + fields if fields else ''}"


def _logfmt(_: Any, __: str, event: dict[str, Any]) -> str:
    first: dict[str, Any] = {key: event.pop(key) for key in ("timestamp", "level", "event") if key in event}
    return _pairs({**first, **event})


def _pairs(event: dict[str, Any]) -> str:
    return " ".join(f"{key}={_quote(value)}" for key, value in event.items())


def _quote(value: Any) -> str:
    """A logfmt value: bare when unambiguous, else in double quotes with escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' ="\\'):
        return text
    return '"' + escape_nonprintable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _printable_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal, a run's output (logged as the event) must not drive the terminal."""
    if isinstance(event.get("event"), str):
        event["event"] = escape_nonprintable(event["event"])
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    kind = resolve_format(fmt, stream)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _drop_none,
        structlog.processors.add_log_level,
    ]
    if kind != "journald":
        processors.append(_timestamp)
    processors.append(structlog.processors.format_exc_info)
    renderer: Any
    if kind == "journald":
        renderer = _journald
    elif kind == "json":
        renderer = structlog.processors.JSONRenderer()
    elif kind == "console":
        processors.append(_printable_event)
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = _logfmt
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Unbreakable(stream))),
        cache_logger_on_first_use=False,
    )


class _Unbreakable:
    """The log stream, for a daemon: once its reader has gone away (a pipe to a `| head` that
    ended, a journal that closed the stream), log lines are dropped.  Losing log lines is bad; a
    worker dying from one, and with it every run it executes, is worse.  A closed pipe never opens
    again, so nothing more is tried (the stream's buffer would only grow)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream: TextIO | None = stream

    def write(self, text: str) -> int:
        return self._attempt(lambda stream: stream.write(text)) or 0

    def flush(self) -> None:
        self._attempt(lambda stream: stream.flush())

    def _attempt(self, action: Callable[[TextIO], Any]) -> Any:
        if self._stream is None:
            return None
        try:
            return action(self._stream)
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            self._stream = None
            return None


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)

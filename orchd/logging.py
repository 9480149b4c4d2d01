"""Daemon and CLI logging through structlog, to stderr, in the form the reader needs.

* journald (stderr is the journal stream, ``JOURNAL_STREAM``): one line per event, a syslog
  priority prefix (``<3>`` error ... ``<7>`` debug) so ``journalctl -p warning`` filters, then
  ``event key=value ...``, no timestamp (the journal has one);
* a terminal: structlog's coloured console output;
* anything else (a file, a pipe): ``ts=... level=... event key=value`` lines; ``json`` on request.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

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


def _journald(_: Any, method: str, event: dict[str, Any]) -> str:
    """``<6>message key=value ...``: journald turns the prefix into the entry's priority."""
    level = event.pop("level", method)
    message = _one_line(str(event.pop("event", "")))
    event.pop("timestamp", None)
    fields = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
    return f"<{_PRIORITY.get(level, 6)}>{message}{' ' + fields if fields else ''}"


def _one_line(text: str) -> str:
    """journald splits entries at newlines: a multi-line value (a traceback) must stay one entry."""
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _quote(value: Any) -> str:
    """logfmt quoting: bare when unambiguous, else in double quotes with escapes."""
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\r'):
        return text
    return '"' + _one_line(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    kind = resolve_format(fmt, stream)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _drop_none,
        structlog.processors.add_log_level,
    ]
    if kind != "journald":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=False))
    processors.append(structlog.processors.format_exc_info)
    renderer: Any
    if kind == "journald":
        renderer = _journald
    elif kind == "json":
        renderer = structlog.processors.JSONRenderer()
    elif kind == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)

"""Errors meant for a person: one line, and the exit status a script or systemd can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EX_USAGE = 2
EX_CONFIG = 78  # sysexits.h EX_CONFIG; the units set RestartPreventExitStatus=78


class OrchdError(Exception):
    """A user-facing failure: printed as one line without a traceback."""

    exit_code = 1


class ConfigError(OrchdError):
    """Bad configuration: refused before anything starts, so systemd must not restart-loop on it."""

    exit_code = EX_CONFIG


class NotFound(OrchdError):
    """A deployment, pool or run named on the command line (or in a URL) does not exist."""


def closest(name: str, known: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The one of ``known`` a mistyped ``name`` most likely meant, if any is close enough."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' naming the closest of ``known`` to a mistyped ``name``, or ''."""
    match = closest(name, known)
    return f" (did you mean {match!r}?)" if match else ""


class DatabaseError(OrchdError):
    """The database failed a statement (raised by the data layer in place of the driver's error).
    ``reason`` is its cause in one line, for logs; the message is what a person reads."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached or is not answering: worth waiting out, which the daemons
    do with backoff.  A message names host and port, never a password."""


class DatabaseMissing(DatabaseUnavailable):
    """The SQLite file of the config does not exist (yet)."""


class DatabaseForbidden(DatabaseUnavailable):
    """This process may not use the SQLite file (permissions): not an outage, waiting won't help."""

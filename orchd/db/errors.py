"""The data layer's one failure boundary: driver errors become orchd's own, with one reason.

Every engine orchd makes has ``install`` on it, so whatever statement or connection fails, its
caller gets ``DatabaseUnavailable`` (the connection failed or the database is not answering:
worth waiting out, which the daemons do with backoff) or ``DatabaseError`` (the database refused
the statement), never a SQLAlchemy or driver exception.  The reason is read one way for both
databases, so one outage reads the same in every daemon's log: the first line of the driver's
message (PostgreSQL puts the cause there and a hint or the statement's position after it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, OperationalError

from orchd.errors import DatabaseError, DatabaseUnavailable

#: PostgreSQL's "undefined table / column / function": what an old schema looks like.
_SCHEMA_STATES = {"42P01", "42703", "42883"}


def reason(exc: BaseException) -> str:
    """One line saying why: the first line of the driver's message (of ``exc`` itself otherwise)."""
    cause: Any = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def hint(exc: DBAPIError) -> str:
    """A likely cause, only when it is likely: an old schema (a table or column it does not
    know), or a file that is not an SQLite database at all; nothing for other errors."""
    text = str(exc.orig).lower()
    if (
        getattr(exc.orig, "sqlstate", None) in _SCHEMA_STATES
        or "no such table" in text
        or "no such column" in text
    ):
        return " (is the schema current? `orchd db status`)"
    if "file is not a database" in text or "disk image is malformed" in text:
        return " (is database.url an orchd SQLite database?)"
    return ""


def translate(exc: DBAPIError) -> DatabaseError:
    """orchd's error for a driver's: an OperationalError (connection lost or refused, the server
    shutting down, SQLite busy) is DatabaseUnavailable, anything else DatabaseError."""
    why = reason(exc)
    kind = DatabaseUnavailable if isinstance(exc, OperationalError) else DatabaseError
    return kind(f"database error: {why}{hint(exc)}", reason=why)


def install(engine: Engine) -> Engine:
    """Translate every error of ``engine`` (statements and connecting) at the boundary; SQLAlchemy
    has already done its cleanup (a broken connection is invalidated, the pool refreshed)."""

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> None:
        if isinstance(context.sqlalchemy_exception, DBAPIError):
            raise translate(context.sqlalchemy_exception) from context.sqlalchemy_exception

    return engine

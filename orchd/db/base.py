"""What every part of the data layer shares: the engine, who acts, the two kinds of transaction,
and the few places where SQLite and PostgreSQL differ.

Transactions are short by rule (SQLite: one ``BEGIN IMMEDIATE`` writer at a time; PostgreSQL: a
long one holds back vacuum of the queue), so every public method of the data layer opens its
own, and none is held across a call back into a daemon.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from orchd.db import wake
from orchd.db.engine import READ_ONLY

#: The LISTEN/NOTIFY channel of wake-ups; the payload is the pool name.
CHANNEL = "orchd"
#: The ``Access.snapshot`` block being run (per thread and task): its engine, and its read
#: transaction once the block has read something.
_SHARED: ContextVar[_Shared | None] = ContextVar("orchd_shared_read", default=None)


@dataclass
class _Shared:
    engine: Engine
    conn: Connection | None = None


def chunks(ids: Sequence[Any], size: int = 5000) -> Iterable[Sequence[Any]]:
    """IN-lists small enough for SQLite's bound-parameter limit."""
    return (ids[i : i + size] for i in range(0, len(ids), size))


def reading(engine: Engine) -> Any:
    """``Access.read`` of ``engine``, for the few reads outside the data layer's classes (the
    server version, the schema revision, the server's connections): inside a ``snapshot()`` block
    they join its one transaction, so a page's health checks cost no transactions of their own."""
    shared = _SHARED.get()
    if shared is None or shared.engine is not engine:
        return _read_connection(engine)
    if shared.conn is None:
        shared.conn = _read_connection(engine)
    return nullcontext(shared.conn)


def _read_connection(engine: Engine) -> Connection:
    conn = engine.connect().execution_options(**READ_ONLY)
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


class Access:
    """The engine and the actor (recorded in the run history as who made each change)."""

    def __init__(self, engine: Engine, actor: str) -> None:
        self.engine = engine
        self.actor = actor
        self._postgres = engine.dialect.name == "postgresql"
        self._dialect = postgresql if self._postgres else sqlite
        self._wake_dir = wake.wake_dir(engine)

    def _insert(self, table: Table) -> Any:
        """A dialect INSERT, so ON CONFLICT works the same on both databases."""
        return self._dialect.insert(table)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends (SQLite: BEGIN IMMEDIATE); then,
        on SQLite, the workers of the pools it queued runs for are woken (``orchd.db.wake``):
        after the commit, so a woken worker finds the runs."""
        if self._wake_dir is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.begin() as conn:
            try:
                yield conn
            except BaseException:
                with suppress(Exception):  # not sent; an invalidated connection has no info left
                    conn.info.pop(wake.PENDING, None)
                raise
            pools = conn.info.pop(wake.PENDING, None)
        if pools:
            wake.send(self._wake_dir, pools)

    def read(self) -> Any:
        """A transaction that only reads and sees one snapshot of the database in all its statements,
        so a report is consistent: PostgreSQL REPEATABLE READ (which never fails to serialize a
        transaction that only reads), SQLite a deferred BEGIN (in WAL mode it keeps its snapshot,
        and readers never block writers).  Inside ``snapshot()``: that block's transaction."""
        return reading(self.engine)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read of the block shares one read transaction: what a web page shows is one
        snapshot, read in a third of the round trips (a BEGIN and a ROLLBACK per report
        otherwise, which on a busy host cost more than the queries).  For reads only (a write
        opens its own transaction, and the block does not see it); kept short like any
        transaction: a page, never a stream.  The transaction starts at the block's first read
        and holds its connection to the end of the block: a connection taken from the engine
        directly after that waits for another one (SQLite has only one)."""
        shared = _SHARED.get()
        if shared is not None and shared.engine is self.engine:
            yield
            return
        mine = _Shared(self.engine)
        token = _SHARED.set(mine)
        try:
            yield
        finally:
            _SHARED.reset(token)
            if mine.conn is not None:
                mine.conn.close()

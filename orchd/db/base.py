"""What every part of the data layer shares: the engine, who acts, the two kinds of transaction,
and the few places where SQLite and PostgreSQL differ.

Transactions are short by rule (SQLite: one ``BEGIN IMMEDIATE`` writer at a time; PostgreSQL: a
long one holds back vacuum of the queue), so every public method of the data layer opens its
own, and none is held across a call back into a daemon.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from orchd.db.engine import READ_ONLY

#: The LISTEN/NOTIFY channel of wake-ups; the payload is the pool name.
CHANNEL = "orchd"


def chunks(ids: Sequence[Any], size: int = 5000) -> Iterable[Sequence[Any]]:
    """IN-lists small enough for SQLite's bound-parameter limit."""
    return (ids[i : i + size] for i in range(0, len(ids), size))


class Access:
    """The engine and the actor (recorded in the run history as who made each change)."""

    def __init__(self, engine: Engine, actor: str) -> None:
        self.engine = engine
        self.actor = actor
        self._postgres = engine.dialect.name == "postgresql"
        self._dialect = postgresql if self._postgres else sqlite

    def _insert(self, table: Table) -> Any:
        """A dialect INSERT, so ON CONFLICT works the same on both databases."""
        return self._dialect.insert(table)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends (SQLite: BEGIN IMMEDIATE)."""
        with self.engine.begin() as conn:
            yield conn

    def read(self) -> Any:
        """A transaction that only reads and sees one snapshot of the database in all its statements,
        so a report is consistent: PostgreSQL REPEATABLE READ (which never fails to serialize a
        transaction that only reads), SQLite a deferred BEGIN (in WAL mode it keeps its snapshot,
        and readers never block writers)."""
        conn = self.engine.connect().execution_options(**READ_ONLY)
        if self._postgres:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return conn

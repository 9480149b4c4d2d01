"""Leader locks: one scheduler acts, the others wait as hot standbys.

PostgreSQL: a session advisory lock on a connection of its own, to PostgreSQL itself (a
transaction-mode pooler cannot hold a session: ``database.direct_url`` then).  If that connection
drops (the leader's host dies, the network splits, the server restarts) the lock is gone with it, a
standby gets it on its next try, and the old leader notices at its next check and stops acting at
once.  The session asks the server for TCP keepalives of its own (engine.SERVER_OPTIONS), so a
leader cut off by the network loses the lock within seconds, not after the kernel's two hours.
SQLite (one host): an exclusive ``flock`` on a file beside the database, released by the kernel
when the process dies, however it dies.

Materialization is idempotent anyway, so a brief overlap of two leaders never duplicates a run;
the lock keeps the work (and the reaping) in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import time
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from orchd.config import DatabaseConfig
from orchd.db.engine import connect_args, parse_url, session_url
from orchd.db.errors import install
from orchd.errors import ConfigError, DatabaseError

_LOCK_KEY = 0x6F72636864  # "orchd"
#: How often the leader asks the server whether its lock is still held (it looks at the session's
#: socket before every tick in between): one query a second was most of an idle scheduler's CPU.
_CHECK_EVERY = 10.0


class Leadership(Protocol):
    def acquire(self) -> bool:
        """Try once, without waiting; True when this process is (still) the leader."""

    def held(self) -> bool:
        """Is the lock still ours?  Asked before every tick, so it must be cheap."""

    def release(self) -> None:
        """Give the lock up (at shutdown); a standby takes it on its next try."""


class AdvisoryLock:
    """PostgreSQL: a session advisory lock held by a connection of its own.  ``held`` asks the
    server as soon as the session's socket has anything to read, and every _CHECK_EVERY seconds
    anyway, so a leader whose session was dropped (network, server restart) learns it at its next
    tick; a database error while checking counts as lost, never as held."""

    def __init__(self, url: URL, db: DatabaseConfig) -> None:
        args = connect_args(db, "orchd-leader", url=url)
        self._engine = install(create_engine(url, poolclass=NullPool, connect_args=args))
        self._conn: Connection | None = None
        self._held = False
        self._next_check = 0.0

    def acquire(self) -> bool:
        if self._held:
            return self.held()
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._held = bool(
                self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
            )
        except DatabaseError:
            self._drop()
            raise
        return self._held

    def held(self) -> bool:
        if not self._held or self._conn is None:
            return False
        if time.monotonic() < self._next_check and not self._session_has_news():
            return True
        try:
            still = self._conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = :k"
                ),
                {"k": _LOCK_KEY},
            ).scalar()
        except DatabaseError:
            self._drop()
            return False
        self._held = bool(still)
        self._next_check = time.monotonic() + _CHECK_EVERY
        return self._held

    def _session_has_news(self) -> bool:
        """Has the server sent the idle session anything, or has it ended?  A session the server
        ended (a restart, pg_terminate_backend) or the kernel gave up on (keepalives, the TCP user
        timeout) has something to read: its last message or its end.  A live idle one has not."""
        assert self._conn is not None
        try:
            poller = select.poll()
            poller.register(self._conn.connection.dbapi_connection.fileno(), select.POLLIN)  # type: ignore[union-attr]
            return bool(poller.poll(0))
        except Exception:  # a connection in any odd state: ask the server
            return True

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(DBAPIError, DatabaseError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        self._drop()
        self._engine.dispose()


class FileLock:
    """SQLite: ``flock`` on a file beside the database; the kernel releases it when the process
    dies, however it dies, so a standby on the same host takes over at its next try."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_session(db: DatabaseConfig) -> URL | None:
    """The URL the leader lock is taken on (None on SQLite); a ConfigError (exit 78, checked before
    anything starts) when a transaction pooler is in the way and no direct URL is configured."""
    url = session_url(db)
    if url is None and parse_url(db.url).get_backend_name() == "postgresql":
        raise ConfigError(
            "database.direct_url: a scheduler needs a session of its own for its leader lock, which "
            'database.pooler = "transaction" cannot give: set direct_url to PostgreSQL itself'
        )
    return url


def leadership_for(engine: Engine, db: DatabaseConfig) -> Leadership:
    """The leader lock of ``engine``'s database (an advisory lock on PostgreSQL, over
    ``check_session``'s URL; a file lock on SQLite)."""
    if engine.dialect.name == "postgresql":
        url = check_session(db)
        assert url is not None
        return AdvisoryLock(url, db)
    database = engine.url.database or ""
    if database in ("", ":memory:"):
        raise ValueError("an in-memory SQLite database cannot be shared by a scheduler and workers")
    return FileLock(Path(database + ".scheduler.lock"))

"""Leader election: one scheduler acts, the others wait as hot standbys.

PostgreSQL: a session advisory lock on a connection of its own.  If that connection drops (the
leader's host dies, the network splits, the server restarts) the lock is gone with it, a standby
gets it on its next try, and the old leader notices at its next check and stops acting at once.
SQLite (one host): an exclusive ``flock`` on a file beside the database, released by the kernel
when the process dies, however it dies.

Materialization is idempotent anyway, so a brief overlap of two leaders never duplicates a run;
the lock keeps the work (and the reaping) in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

_LOCK_KEY = 0x6F72636864  # "orchd"
#: How often a scheduler records itself (leader or standby) in the schedulers table, seconds:
#: what `orchd status` reads, so "seen 8s ago" is normal however short the tick.
SEEN_EVERY = 10.0


class Leadership(Protocol):
    def acquire(self) -> bool:
        """Try once, without waiting; True when this process is (still) the leader."""

    def held(self) -> bool:
        """Is the lock still ours?  Checked before every tick."""

    def release(self) -> None: ...


class AdvisoryLock:
    def __init__(self, engine: Engine) -> None:
        self._engine = create_engine(engine.url, poolclass=NullPool, connect_args={"connect_timeout": 5})
        self._conn: Connection | None = None
        self._held = False

    def acquire(self) -> bool:
        if self._held:
            return self.held()
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._held = bool(
                self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
            )
        except DBAPIError:
            self._drop()
            raise
        return self._held

    def held(self) -> bool:
        if not self._held or self._conn is None:
            return False
        try:
            still = self._conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = :k"
                ),
                {"k": _LOCK_KEY},
            ).scalar()
        except DBAPIError:
            self._drop()
            return False
        self._held = bool(still)
        return self._held

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        self._drop()
        self._engine.dispose()


class FileLock:
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


def leadership_for(engine: Engine) -> Leadership:
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    database = engine.url.database or ""
    if database in ("", ":memory:"):
        raise ValueError("an in-memory SQLite database cannot be shared by a scheduler and workers")
    return FileLock(Path(database + ".scheduler.lock"))

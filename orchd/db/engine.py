"""Engines for the two supported databases, set up so the rest of orchd need not care which.

SQLite (one host): WAL, a busy timeout, foreign keys, and every write transaction opened with
``BEGIN IMMEDIATE`` so the write lock is taken up front instead of failing half-way with
"database is locked".  Read-only work asks for a deferred BEGIN with ``READ_ONLY``.
PostgreSQL (many hosts): psycopg 3, pre-pinged pooled connections.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from orchd.backoff import Backoff
from orchd.config import DatabaseConfig
from orchd.db.errors import install
from orchd.errors import ConfigError, DatabaseForbidden, DatabaseMissing, DatabaseUnavailable

if TYPE_CHECKING:
    import sqlite3

#: Execution option for transactions that only read (SQLite: plain deferred BEGIN).
READ_ONLY = {"orchd_read_only": True}
#: A connection idle this long gets TCP keepalive probes, this often, this many before it is
#: declared dead (seconds): a LISTEN connection to a vanished server is noticed in under 30 s.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3
#: What a session to PostgreSQL itself asks of the server: the same keepalives on its side (a
#: client that vanished with the network frees its connection, and a leader its lock, within
#: seconds instead of the kernel's two hours), and the end of a transaction whose client has gone
#: quiet in the middle of it (a worker cut off mid-claim would otherwise hold its row locks until
#: then).  orchd's transactions last milliseconds; 30 s leaves room for any pause.
SERVER_OPTIONS = (
    f"-c tcp_keepalives_idle={KEEPALIVE_IDLE} -c tcp_keepalives_interval={KEEPALIVE_INTERVAL} "
    f"-c tcp_keepalives_count={KEEPALIVE_COUNT} -c idle_in_transaction_session_timeout=30s"
)


def parse_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(f"database.url: not a database URL: {mask(raw)!r}") from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise ConfigError(
        f"database.url: unsupported database {backend!r} (expected sqlite:///PATH or postgresql://...)"
    )


def mask(raw: str | URL) -> str:
    """The URL with any password replaced by ***, safe to print and log."""
    try:
        url = raw if isinstance(raw, URL) else make_url(raw)
    except ArgumentError:
        return "<unparsable URL>"
    return url.render_as_string(hide_password=True)


def describe(url: URL) -> str:
    """Where the database is, for error messages: host:port/db or the SQLite path."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def make_engine(db: DatabaseConfig, *, pool_size: int | None = None) -> Engine:
    """``pool_size``: connections kept open (default ``database.pool_size``); a short command
    asks for 1, so its ping, schema check and queries share one connection (a PostgreSQL
    connection costs a server process start: several ms each)."""
    url = parse_url(db.url)
    if url.get_backend_name() == "sqlite":
        return install(_sqlite_engine(url, db))
    # No pre-ping: it would double the queries of an idle daemon.  A connection broken by a
    # database restart fails once, SQLAlchemy invalidates the pool, and the loops retry.
    size = db.pool_size if pool_size is None else pool_size
    kwargs: dict[str, Any] = {"pool_size": size, "max_overflow": size}
    args = connect_args(db, url=url if db.pooler == "none" else None)
    if not prepares(db):
        args["prepare_threshold"] = None
    return install(create_engine(url, connect_args=args, **kwargs))


def connect_args(db: DatabaseConfig, application: str = "orchd", *, url: URL | None = None) -> dict[str, Any]:
    """psycopg's arguments for every PostgreSQL connection of orchd.  TCP keepalives and a TCP
    user timeout bound how long a call can hang on a dead network (a host cut off, a firewall
    dropping packets): without them a statement waits for the kernel's retransmissions, minutes.
    ``url``: the connection goes to PostgreSQL itself (not through a transaction pooler, which
    refuses startup options), so it asks the server for SERVER_OPTIONS too, after any options
    the URL itself gives."""
    timeout = max(1, int(db.connect_timeout))
    args: dict[str, Any] = {
        "connect_timeout": timeout,
        "application_name": application,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE,
        "keepalives_interval": KEEPALIVE_INTERVAL,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": timeout * 1000,
    }
    if url is not None:
        theirs = url.query.get("options", "")
        args["options"] = " ".join(
            [*([theirs] if isinstance(theirs, str) else theirs), SERVER_OPTIONS]
        ).strip()
    return args


def prepares(db: DatabaseConfig) -> bool:
    """Whether psycopg may prepare statements server-side (after a few executions of one on a
    connection).  A transaction-mode pooler hands each transaction any server connection, where
    the statement is unknown or, worse, another client's: PgBouncer < 1.21 (Debian 12 ships 1.18)
    answers 'prepared statement "_pg3_0" already exists'.  PgBouncer >= 1.22 with
    max_prepared_statements tracks them (and psycopg closes them as it expects, libpq >= 17)."""
    return db.prepared_statements == "on" or (db.prepared_statements == "auto" and db.pooler == "none")


def session_url(db: DatabaseConfig) -> URL | None:
    """Where a connection that needs a session of its own goes (LISTEN, a session advisory lock):
    ``direct_url`` when set (user, password, database and options default to url's, so a secret
    stays in one place), url itself when no transaction pooler is in between, else None (there is
    none: poll instead).  Always None on SQLite."""
    url = parse_url(db.url)
    if url.get_backend_name() != "postgresql":
        return None
    if db.direct_url:
        direct = parse_url(db.direct_url)
        return direct.set(
            username=direct.username or url.username,
            password=direct.password if direct.password is not None else url.password,
            database=direct.database or url.database,
            query={**url.query, **direct.query},
        )
    return url if db.pooler == "none" else None


def conninfo(url: URL) -> str:
    """A URL as plain psycopg (not SQLAlchemy) takes it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def check_sqlite_file(url: URL, *, create: bool) -> None:
    """For an SQLite URL: the file must exist unless ``create`` (then it and its directories are
    made), and this process must be able to write it and, for the WAL, its directory.  Raises
    DatabaseMissing or DatabaseForbidden: a mistyped path must not become an empty database that a
    worker sits idle on, and a permission problem is not an outage to wait out."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database or "").expanduser()
    if not path.exists():
        if not create:
            raise DatabaseMissing(f"{describe(url)} does not exist (`orchd db upgrade` creates it)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise DatabaseForbidden(f"{describe(url)}: permission denied creating {path.parent}") from None
    directory = path.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseForbidden(
            f"{describe(url)}: permission denied: cannot write in {directory} "
            "(SQLite creates its -wal and -shm files beside the database)"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseForbidden(f"{describe(url)}: permission denied: cannot read and write {path}")


def _sqlite_engine(url: URL, db: DatabaseConfig) -> Engine:
    engine = create_engine(
        url,
        connect_args={"timeout": db.busy_timeout, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
    )
    busy_ms = int(db.busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy issues BEGIN itself (below)
        cursor = dbapi_conn.cursor()
        for pragma in (f"busy_timeout={busy_ms}", "synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        _set_wal(cursor, db.busy_timeout)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("orchd_read_only")
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _set_wal(cursor: sqlite3.Cursor, patience: float) -> None:
    """Switch to WAL.  SQLite answers "database is locked" at once, without the busy handler, when
    several processes open a new file together and race to switch it, so retry until ``patience``."""
    import sqlite3  # here, not at the top: a PostgreSQL process never loads SQLite (0.8 MB of RSS)

    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def ping(engine: Engine) -> str:
    """Connect and return the server version; raise DatabaseUnavailable with a clear reason.
    Inside a ``snapshot()`` block, in its transaction (the web's overview pings on every view)."""
    from orchd.db.base import reading  # (base imports this module)

    try:
        with reading(engine) as conn:
            if engine.dialect.name == "sqlite":
                return "SQLite " + str(conn.exec_driver_sql("select sqlite_version()").scalar())
            return str(conn.execute(text("show server_version")).scalar()).split()[0]
    except DatabaseUnavailable as exc:
        message = f"cannot reach {describe(engine.url)}: {exc.reason}"
        raise DatabaseUnavailable(message, reason=exc.reason) from None


def wait_for_database(
    engine: Engine,
    *,
    should_stop: Callable[[], bool],
    on_wait: Callable[[str, float], None],
    max_delay: float = 30.0,
) -> bool:
    """Ping with exponential backoff until the database answers; False if told to stop first."""
    backoff = Backoff(0.5, max_delay)
    while not should_stop():
        try:
            ping(engine)
            return True
        except DatabaseUnavailable as exc:
            delay = backoff.failed()
            on_wait(str(exc), delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not should_stop():
                time.sleep(min(0.1, delay))
    return False

"""SQLite wake-ups: what NOTIFY is on PostgreSQL, as datagrams to the workers of the same file.

An SQLite worker used to notice a new run (``orchd run create``, a retry, a scheduler's tick) only
at its next look at ``PRAGMA data_version``, half a second apart: a created run waited 115-250 ms
on average where PostgreSQL's NOTIFY starts it in 13.  Here each worker binds a Unix datagram
socket in ``<database>-wake/`` (beside the file's ``-wal`` and ``-shm``, so every process of that
database finds it, whatever its state directory), and a transaction that queued runs for a pool
sends the pool's name to every socket there once it has committed (``Access.write``): the worker
claims within a millisecond or two.

Like a notification, a datagram is only a hint: the claim query stays the truth, and the
``data_version`` look stays as the backstop (a writer without access to the sockets, a lost
datagram).  Sending never blocks or fails a writer: a full socket buffer means its worker has
wake-ups waiting already, a socket nobody listens on (a worker that was killed) is removed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine

#: Where a write transaction collects the pools to wake once it commits (Connection.info).
PENDING = "orchd_wake"


@dataclass(frozen=True)
class WakeEvent:
    """Runs of ``pool`` may be claimable now (empty: of any pool): a worker should look; or, with
    ``due`` (seconds since the epoch), runs of it come due then: a worker should look then."""

    pool: str
    due: float | None = None


def payload(pool: str, due_at: datetime, now: datetime) -> str:
    """A NOTIFY's payload: the pool's name, and ``@`` the epoch seconds of its earliest queued
    run when that is not due yet.  Compared with the worker's own clock, as its claim compares
    due times (``Queue.claim``)."""
    return pool if due_at <= now else f"{pool}@{due_at.timestamp():.3f}"


def parse(message: str) -> WakeEvent:
    """The WakeEvent a NOTIFY payload stands for (a pool named with an ``@`` stays whole)."""
    pool, at, due = message.rpartition("@")
    try:
        return WakeEvent(pool, float(due)) if at else WakeEvent(message)
    except ValueError:
        return WakeEvent(message)


def wake_dir(engine: Engine) -> Path | None:
    """The directory of wake sockets of an SQLite file database; None for PostgreSQL and memory."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database).resolve().with_name(Path(database).name + "-wake")


def later(conn: Connection, pool_names: Iterable[str]) -> None:
    """Wake the workers of these pools once this transaction commits (``Access.write`` sends)."""
    conn.info.setdefault(PENDING, set()).update(pool_names)


def send(directory: Path, pool_names: Collection[str]) -> None:
    """One datagram (the pool names, a line each) to every worker socket in ``directory``."""
    try:
        sockets = [p for p in directory.iterdir() if p.suffix == ".sock"]
    except OSError:  # no worker has made it yet: none to wake
        return
    if not sockets:
        return
    payload = "\n".join(sorted(pool_names)).encode()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:  # a sandbox without Unix sockets: the workers' poll finds the runs
        return
    with sock:
        for path in sockets:
            try:
                sock.sendto(payload, socket.MSG_DONTWAIT, str(path))
            except ConnectionRefusedError:  # its worker is gone without removing it
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:  # full (wake-ups already waiting), not ours to write, just removed
                pass


class WakeSocket:
    """A worker's receiving end: posts a WakeEvent for each datagram naming one of its pools."""

    def __init__(self, directory: Path, pools: Collection[str], events: queue.Queue[object]) -> None:
        self._path = directory / f"{os.getpid()}.sock"
        self._pools = set(pools)
        self._events = events
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._thread = threading.Thread(target=self._receive, name="wake", daemon=True)

    def start(self) -> None:
        """Bind (writable by whoever may write the database file) and listen.  A directory or
        socket that cannot be made costs the wake-ups only: the worker polls as before."""
        database = self._path.parent.with_name(self._path.parent.name.removesuffix("-wake"))
        try:
            self._path.parent.mkdir(mode=0o755, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()  # a predecessor with our pid left it
            self._sock.bind(str(self._path))
            owner = database.stat()
            os.chmod(self._path, owner.st_mode & 0o666)
            if os.geteuid() == 0 and owner.st_uid != 0:
                # a root worker (the podman drop-in) beside the daemons of the database's owner:
                # the directory and socket are that owner's, as SQLite gives it the -wal and -shm
                for path in (self._path.parent, self._path):
                    os.chown(path, owner.st_uid, owner.st_gid)
        except OSError as exc:
            from orchd.logging import get_logger  # here: the CLI, which sends only, loads no structlog

            get_logger("orchd.worker").warning(
                "no wake-up socket: new runs are seen at the next poll", error=str(exc)
            )
            self._sock.close()
            return
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as poke:
            poke.sendto(b"", str(self._path))  # ends the blocking receive
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._path.unlink()
        self._sock.close()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if self._pools.intersection(data.decode(errors="replace").split("\n")):
                self._events.put(WakeEvent(""))

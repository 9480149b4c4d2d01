"""sd_notify from the real daemons, received on a NOTIFY_SOCKET of our own (no systemd needed).

The socket checks what systemd would: every datagram's sender PID (SO_PASSCRED, as for
NotifyAccess=main), READY=1 only after the database answers with a current schema, STATUS=
lines, WATCHDOG=1 from the main loop (stopping when the loop hangs), RELOADING=1 ... READY=1
around SIGHUP and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import socket
import struct
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchd.config import load_config
from orchd.db.engine import make_engine
from orchd.db.store import Store
from orchd.notify import Notifier
from tests.helpers import BIN, wait_for

pytestmark = pytest.mark.slow
WATCHDOG_USEC = 1_000_000
_CREDS = struct.Struct("3i")


@dataclass
class Datagram:
    pid: int
    fields: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket that learns each sender's PID."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._dir = tempfile.TemporaryDirectory(prefix="orchd-notify-")
        if abstract:  # NOTIFY_SOCKET=@name is "\0name"
            name = f"orchd-notify-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(Path(self._dir.name) / "notify")
            self.sock.bind(self.address)
        self.seen: list[Datagram] = []

    def receive(self, timeout: float) -> Datagram | None:
        if not select.select([self.sock], [], [], max(0.0, timeout))[0]:
            return None
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
        pid = next(
            _CREDS.unpack(cdata[: _CREDS.size])[0]
            for level, kind, cdata in ancillary
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
        )
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.seen.append(Datagram(pid, fields))
        return self.seen[-1]

    def expect(self, key: str, value: str | None = None, timeout: float = 30.0) -> Datagram:
        """The next datagram carrying ``key`` (with ``value``); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (got := self.receive(deadline - time.monotonic())) is not None:
            if key in got.fields and value in (None, got.fields[key]):
                return got
        raise AssertionError(
            f"no {key}={value or '*'} in {timeout}s; seen {[d.fields for d in self.seen[-8:]]}"
        )

    def collect(self, seconds: float) -> list[Datagram]:
        deadline, got = time.monotonic() + seconds, []
        while (one := self.receive(deadline - time.monotonic())) is not None:
            got.append(one)
        return got

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


@pytest.fixture
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """A socket bound to a path, or to an abstract name when the test asks with ``abstract``."""
    sock = NotifySocket(abstract=getattr(request, "param", "path") == "abstract")
    yield sock
    sock.close()


@pytest.fixture
def spawn(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path, notify_socket)
    yield spawner
    for proc in spawner.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


class Spawner:
    """Starts a daemon as systemd would: NOTIFY_SOCKET and WATCHDOG_USEC in its environment."""

    def __init__(self, tmp_path: Path, sock: NotifySocket) -> None:
        self.tmp_path = tmp_path
        self.sock = sock
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, command: str, config: Path, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHD_", "WATCHDOG_"))}
        env.update(NOTIFY_SOCKET=self.sock.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
        log = open(self.tmp_path / f"{command}-{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed at exit)
        proc = subprocess.Popen(
            [str(BIN / command), "--config", str(config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append(proc)
        return proc


def _config(tmp_path: Path, url: str, body: str = "") -> Path:
    path = tmp_path / "orchd.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\nconnect_timeout = "1s"\n[scheduler]\nloop_interval = "100ms"\n'
        + textwrap.dedent(body)
    )
    return path


DEPLOYMENT = """
[[deployments]]
name = "every-minute"
command = ["true"]
schedules = [{ interval = "1m" }]
"""


def _pings(datagrams: list[Datagram]) -> list[float]:
    return [d.at for d in datagrams if d.fields.get("WATCHDOG") == "1"]


def test_scheduler_ready_watchdog_reload_stop(
    tmp_path: Path, db_url: str, spawn: Spawner, notify_socket: NotifySocket
) -> None:
    config = _config(tmp_path, db_url, DEPLOYMENT)
    proc = spawn("orchd-scheduler", config)
    ready = notify_socket.expect("READY", "1")
    assert ready.pid == proc.pid  # NotifyAccess=main would accept it
    assert ready.fields["STATUS"]
    notify_socket.expect("STATUS", "leader, 1 deployments, 1 schedules, tick every 0.1s")

    pings = _pings(notify_socket.collect(2.5))
    assert len(pings) >= 3, "WATCHDOG=1 comes at a fraction of WATCHDOG_USEC"
    assert max(b - a for a, b in itertools.pairwise(pings)) < WATCHDOG_USEC / 1e6

    (tmp_path / "deployments.d").mkdir()
    (tmp_path / "deployments.d" / "more.toml").write_text(DEPLOYMENT.replace("every-minute", "another"))
    proc.send_signal(signal.SIGHUP)
    notify_socket.expect("RELOADING", "1")
    reloaded = notify_socket.expect("READY", "1")
    assert reloaded.fields["STATUS"] == "leader, 2 deployments, 2 schedules, tick every 0.1s"

    proc.send_signal(signal.SIGTERM)
    notify_socket.expect("STOPPING", "1")
    assert proc.wait(timeout=30) == 0
    assert {d.pid for d in notify_socket.seen} == {proc.pid}


def test_worker_ready_status_stop_and_runs_cannot_notify(
    tmp_path: Path, db_url: str, spawn: Spawner, notify_socket: NotifySocket
) -> None:
    config = _config(
        tmp_path,
        db_url,
        """
        [[deployments]]
        name = "peek"
        pool = "p"
        command = ["sh", "-c", "echo NOTIFY_SOCKET=${NOTIFY_SOCKET:-unset}; sleep 1"]
        """,
    )
    proc = spawn("orchd-worker", config, "--pool", "p", "--concurrency", "2")
    ready = notify_socket.expect("READY", "1")
    assert (ready.pid, ready.fields["STATUS"]) == (proc.pid, "running 0/2 runs, pools p")

    store = Store(make_engine(load_config(config).database), "test")
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("peek", datetime.now(UTC))
    notify_socket.expect("STATUS", "running 1/2 runs, pools p")
    proc.send_signal(signal.SIGTERM)
    stopping = notify_socket.expect("STOPPING", "1")
    assert stopping.fields["STATUS"] == "stopping: waiting for 1 runs"
    assert proc.wait(timeout=30) == 0
    assert {d.pid for d in notify_socket.seen} == {proc.pid}
    run = store.get_run(run_id)
    assert run is not None and run.state == "COMPLETED"
    assert [line.line for line in store.run_logs(run_id)] == ["NOTIFY_SOCKET=unset"]


def test_no_ready_while_the_database_is_down(
    tmp_path: Path, spawn: Spawner, notify_socket: NotifySocket
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = _config(tmp_path, f"postgresql+psycopg://orchd@127.0.0.1:{port}/orchd")
    proc = spawn("orchd-scheduler", config)
    waiting = notify_socket.expect("STATUS")
    assert waiting.fields["STATUS"].startswith("waiting for database: ")
    assert "READY" not in waiting.fields
    notify_socket.collect(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not any("READY" in d.fields for d in notify_socket.seen)


def test_no_ready_with_an_old_schema(
    tmp_path: Path, empty_url: str, spawn: Spawner, notify_socket: NotifySocket
) -> None:
    """migrate_on_start = false and a database without the schema: refused, never READY."""
    config = _config(tmp_path, empty_url)
    config.write_text(config.read_text().replace("[database]\n", "[database]\nmigrate_on_start = false\n"))
    proc = spawn("orchd-worker", config)
    assert proc.wait(timeout=30) != 0
    notify_socket.collect(0.2)
    assert not any("READY" in d.fields for d in notify_socket.seen)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_hung_scheduler_loop_stops_the_watchdog(
    tmp_path: Path, db_url: str, spawn: Spawner, notify_socket: NotifySocket
) -> None:
    """A tick blocked on a table lock is a hung main loop: the pings stop (systemd would kill it)
    and resume when the lock goes."""
    proc = spawn("orchd-scheduler", _config(tmp_path, db_url, DEPLOYMENT))
    notify_socket.expect("READY", "1")
    notify_socket.expect("STATUS", "leader, 1 deployments, 1 schedules, tick every 0.1s")
    notify_socket.expect("WATCHDOG", "1")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn, engine.connect() as watcher:
            # the upkeep (every 2-10 s here) reads runs: the next one blocks on the lock
            conn.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
            waiting = text(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND pid <> :locker"
            )
            locker = conn.execute(text("SELECT pg_backend_pid()")).scalar()

            def blocked() -> object:
                # read the socket meanwhile, as systemd does: a full one blocks the daemon's send
                notify_socket.collect(0.1)
                # a transaction of its own each time: pg_stat_activity is a snapshot within one
                with watcher.begin():
                    return watcher.execute(waiting, {"locker": locker}).first()

            wait_for(blocked, what="the scheduler's tick to block")
            notify_socket.collect(0.3)  # a ping sent just before the tick blocked
            assert _pings(notify_socket.collect(2 * WATCHDOG_USEC / 1e6)) == []
            conn.rollback()
        notify_socket.expect("WATCHDOG", "1", timeout=10)
        assert proc.poll() is None
    finally:
        engine.dispose()


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("ok")
    notifier.watchdog()
    notifier.stopping()


@pytest.mark.parametrize("notify_socket", ["path", "abstract"], indirect=True)
def test_watchdog_is_only_for_watchdog_pid(
    monkeypatch: pytest.MonkeyPatch, notify_socket: NotifySocket
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    notifier = Notifier()
    notifier.watchdog()
    notifier.status("not for the watchdog")
    assert notify_socket.expect("STATUS").fields == {"STATUS": "not for the watchdog"}
    assert notify_socket.seen[0].fields == {"STATUS": "not for the watchdog"}

"""SQLite wake-ups (orchd/db/wake.py): a transaction that queues runs sends its pools, after it
commits, to the socket of every worker of that database file, so an SQLite worker starts a new run
at once instead of at its next look at the file."""

from __future__ import annotations

import os
import queue
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchd.config import load_config
from orchd.db import migrate, wake
from orchd.db.listen import Listener
from orchd.db.store import Store
from orchd.db.wake import WakeEvent, WakeSocket
from tests.conftest import MakeConfig
from tests.helpers import daemons, engine_for, store_for, wait_for, write_config

DEPLOYMENT = '[[deployments]]\nname = "now"\ncommand = ["true"]\n'


def _database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'orchd.db'}"
    config = write_config(tmp_path / "orchd.toml", url, DEPLOYMENT)
    engine = engine_for(url)
    migrate.upgrade(engine)
    engine.dispose()
    store = store_for(url)
    store.sync(load_config(config), datetime.now(UTC))
    store.engine.dispose()
    return url


def _receiver(directory: Path, name: str = "listener") -> socket.socket:
    directory.mkdir(exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / f"{name}.sock"))
    sock.settimeout(10)  # a hang guard only
    return sock


def test_a_worker_socket_is_woken_for_its_pools_only(tmp_path: Path) -> None:
    events: queue.Queue[object] = queue.Queue()
    receiver = WakeSocket(tmp_path, ["etl", "default"], events)
    receiver.start()
    try:
        wake.send(tmp_path, {"reports"})  # not its pool: nothing
        wake.send(tmp_path, {"reports", "etl"})
        assert events.get(timeout=10) == WakeEvent("")
        assert events.empty()  # the datagram about "reports" alone was dropped, in order
    finally:
        receiver.stop()
    assert list(tmp_path.glob("*.sock")) == []  # a stopped worker leaves no socket behind


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes files another user owns")
def test_a_root_workers_socket_belongs_to_the_databases_owner(tmp_path: Path) -> None:
    database = tmp_path / "orchd.db"
    database.write_bytes(b"")
    database.chmod(0o640)
    os.chown(database, 65534, 65534)  # the orchd user's file, its daemons and CLI write there
    receiver = WakeSocket(tmp_path / "orchd.db-wake", ["etl"], queue.Queue())
    receiver.start()
    try:
        [path] = (tmp_path / "orchd.db-wake").glob("*.sock")
        for made in (path.parent, path):
            assert (made.stat().st_uid, made.stat().st_gid) == (65534, 65534), made
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        receiver.stop()


def test_a_socket_nobody_listens_on_is_removed(tmp_path: Path) -> None:
    _receiver(tmp_path, "killed-worker").close()  # bound, then its process died: the file stays
    wake.send(tmp_path, {"default"})
    assert list(tmp_path.glob("*.sock")) == []


def test_runs_queued_wake_after_the_commit_and_a_rolled_back_write_wakes_nobody(tmp_path: Path) -> None:
    url = _database(tmp_path)
    store = store_for(url)
    directory = wake.wake_dir(store.engine)
    assert directory == tmp_path / "orchd.db-wake"
    sock = _receiver(directory)
    try:
        with pytest.raises(RuntimeError), store.write() as conn:
            wake.later(conn, ["rolled-back"])
            raise RuntimeError("the transaction fails")
        run_id = store.create_run("now", datetime.now(UTC))
        assert sock.recv(1024) == b"default"  # the first datagram: the failed write sent none
        assert store.get_run(run_id) is not None
    finally:
        sock.close()
        store.engine.dispose()


def test_a_worker_listens_beside_the_database_file_while_it_runs(tmp_path: Path) -> None:
    url = _database(tmp_path)
    config = tmp_path / "orchd.toml"
    directory = tmp_path / "orchd.db-wake"
    with daemons(tmp_path) as group:
        worker = group.start("orchd-worker", "--config", str(config))
        wait_for(lambda: "worker started" in group.output(), what="the worker")
        assert [p.name for p in directory.glob("*.sock")] == [f"{worker.pid}.sock"]
        store = store_for(url)
        run_id = store.create_run("now", datetime.now(UTC))
        wait_for(lambda: (r := store.get_run(run_id)) and r.state == "COMPLETED", what="the run")
        store.engine.dispose()
        assert group.stop(worker) == 0
    assert list(directory.glob("*.sock")) == []


def test_a_wake_up_for_runs_due_later_says_when() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    later = now + timedelta(seconds=90, milliseconds=250)
    assert wake.parse(wake.payload("etl", now, now)) == WakeEvent("etl")
    assert wake.parse(wake.payload("etl", now - timedelta(seconds=5), now)) == WakeEvent("etl")
    assert wake.parse(wake.payload("etl", later, now)) == WakeEvent("etl", later.timestamp())
    assert wake.parse("team@eu") == WakeEvent("team@eu")  # a pool's own "@" is its name's
    assert wake.parse(wake.payload("team@eu", later, now)) == WakeEvent("team@eu", later.timestamp())


def test_a_notify_says_when_queued_runs_come_due(store: Store, make_config: MakeConfig) -> None:
    """PostgreSQL: a run queued for later wakes the listening workers with its due time (they set
    their timer: a scheduler materializing ahead woke every idle worker into an empty claim each
    tick), one due now without (they claim at once)."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's; SQLite's wake-ups are datagrams")
    store.sync(make_config(DEPLOYMENT), datetime.now(UTC))
    events: queue.Queue[object] = queue.Queue()
    listener = Listener(store.engine.url, {}, ["default"], events)
    listener.start()
    try:
        assert events.get(timeout=30) == WakeEvent("")  # connected: look once
        later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        store.create_run("now", datetime.now(UTC), at=later)
        assert events.get(timeout=30) == WakeEvent("default", later.timestamp())
        store.create_run("now", datetime.now(UTC))
        assert events.get(timeout=30) == WakeEvent("default")
    finally:
        listener.stop()

"""Daemons as real processes under failure: leader killed, worker killed, database restarted,
SIGHUP reloads good and broken config, huge output, and prompt wake-up on new runs."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from orchd.config import load_config
from orchd.db.schema import runs, schedulers
from orchd.db.store import Store
from orchd.errors import DatabaseUnavailable
from tests.helpers import daemons, history, pid_alive, proc_status, store_for, wait_for, write_config
from tests.pg import PgServer

pytestmark = pytest.mark.slow


def _leaders(store: Store, since: datetime) -> list[str]:
    try:
        with store.read() as conn:
            return list(
                conn.execute(
                    select(schedulers.c.name).where(
                        schedulers.c.role == "leader", schedulers.c.last_tick_at >= since
                    )
                ).scalars()
            )
    except DatabaseUnavailable:  # the schema is not there yet
        return []


def _no_duplicates(store: Store) -> None:
    with store.read() as conn:
        rows = conn.execute(select(runs.c.deployment_id, runs.c.schedule_key, runs.c.scheduled_for)).all()
    assert [k for k, n in Counter(rows).items() if n > 1] == []


SCHEDULE = """
[scheduler]
loop_interval = "200ms"
horizon = "5s"
[[deployments]]
name = "beat"
command = ["true"]
schedules = [{ interval = "1s" }, { cron = "* * * * * *" , parameters = { second = true } }]
"""


def test_three_schedulers_one_leader_and_fast_failover(tmp_path: Path, db_url: str, backend: str) -> None:
    config = write_config(tmp_path / "orchd.toml", db_url, SCHEDULE)
    store = store_for(db_url)
    with daemons(tmp_path) as group:
        procs = {}
        for _ in range(3):
            proc = group.start("orchd-scheduler", "--config", str(config))
            procs[proc.pid] = proc
        start = datetime.now(UTC)
        [leader] = wait_for(lambda: _leaders(store, start), what="a leader")
        time.sleep(1.0)  # let standbys report in and the leader tick a few times
        assert len(_leaders(store, start)) == 1
        leader_pid = int(leader.rsplit("-", 1)[1])
        procs[leader_pid].kill()
        killed = datetime.now(UTC)
        took_over = time.monotonic()
        # how fast is a figure (printed), not a pass/fail: on a loaded machine a standby's
        # next try can come late; a takeover at all, within the hang guard, is what is checked
        new = wait_for(
            lambda: [n for n in _leaders(store, killed) if n != leader], timeout=60, what="a new leader"
        )
        print(f"\nfailover on {backend}: {time.monotonic() - took_over:.2f}s to {new[0]}")
        time.sleep(1.5)
        for pid, proc in procs.items():
            if pid != leader_pid:
                assert group.stop(proc) == 0
    _no_duplicates(store)


def test_killed_worker_run_is_crashed_and_retried(tmp_path: Path, db_url: str) -> None:
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [scheduler]
    loop_interval = "200ms"
    [worker]
    heartbeat = "300ms"
    lease_timeout = "2s"
    shutdown_grace = "1s"
    [[deployments]]
    name = "victim"
    command = ["sh", "-c", "echo attempt $ORCHD_ATTEMPT; sleep 3"]
    retries = 1
    retry_delay = "0s"
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("victim", datetime.now(UTC))
    with daemons(tmp_path) as group:
        group.start("orchd-scheduler", "--config", str(config))
        first = group.start("orchd-worker", "--config", str(config), "--name", "first")
        row = wait_for(lambda: (r := store.get_run(run_id)) and r.state == "RUNNING" and r, what="RUNNING")
        first.kill()
        first.wait(timeout=10)
        wait_for(lambda: not pid_alive(row.pid), timeout=10, what="the child to die with its worker")
        killed = time.monotonic()
        wait_for(lambda: store.get_run(run_id).attempt == 2, timeout=20, what="CRASHED and re-queued")  # type: ignore[union-attr]
        print(f"\ncrash detected and re-queued {time.monotonic() - killed:.2f}s after SIGKILL (lease 2s)")
        group.start("orchd-worker", "--config", str(config), "--name", "second")
        wait_for(lambda: store.get_run(run_id).state == "COMPLETED", timeout=30, what="the retry to complete")  # type: ignore[union-attr]
    steps = history(store, run_id)
    assert ("RUNNING", "CRASHED") in steps and ("CRASHED", "SCHEDULED") in steps
    assert store.get_run(run_id).worker == "second"  # type: ignore[union-attr]


def test_sighup_reloads_and_a_broken_config_is_ignored(tmp_path: Path, db_url: str) -> None:
    path = write_config(tmp_path / "orchd.toml", db_url, '[scheduler]\nloop_interval = "200ms"\n')
    store = store_for(db_url)
    with daemons(tmp_path) as group:
        sched = group.start("orchd-scheduler", "--config", str(path))
        wait_for(lambda: _leaders(store, datetime.now(UTC) - timedelta(seconds=5)), what="the leader")
        write_config(path, db_url, SCHEDULE)
        sched.send_signal(signal.SIGHUP)
        wait_for(lambda: store.list_runs(deployment="beat"), timeout=15, what="the new deployment's runs")
        path.write_text("[scheduler\nbroken")
        sched.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in group.output(), timeout=15, what="the refusal in the log")
        assert sched.poll() is None
        seen = len(store.list_runs(deployment="beat", limit=1000))
        wait_for(
            lambda: len(store.list_runs(deployment="beat", limit=1000)) > seen,
            timeout=15,
            what="the old config to stay in force",
        )
        assert group.stop(sched) == 0


def test_sqlite_second_scheduler_stands_by(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orchd.db'}"
    config = write_config(tmp_path / "orchd.toml", url, SCHEDULE)
    with daemons(tmp_path) as group:
        first = group.start("orchd-scheduler", "--config", str(config))
        store = store_for(url)
        wait_for(lambda: _leaders(store, datetime.now(UTC) - timedelta(seconds=5)), what="the leader")
        second = group.start("orchd-scheduler", "--config", str(config))

        def roles() -> dict[int, str]:
            with store.read() as conn:
                return dict(conn.execute(select(schedulers.c.pid, schedulers.c.role)).all())

        wait_for(lambda: second.pid in roles(), what="the second scheduler to record itself")
        assert roles() == {first.pid: "leader", second.pid: "standby"}
        first.kill()
        wait_for(
            lambda: (
                _leaders(store, datetime.now(UTC) - timedelta(seconds=1))
                == [f"{os.uname().nodename}-{second.pid}"]
            ),
            timeout=10,
            what="the standby to take over",
        )
        assert group.stop(second) == 0
    _no_duplicates(store)


def test_worker_memory_stays_bounded_with_100mb_of_output(tmp_path: Path, db_url: str) -> None:
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [[deployments]]
    name = "firehose"
    command = ["sh", "-c", "yes 'a line of output from a very chatty job' | head -c 100000000"]
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("firehose", datetime.now(UTC))
    with daemons(tmp_path) as group:
        worker = group.start("orchd-worker", "--config", str(config))
        wait_for(lambda: store.get_run(run_id).state == "COMPLETED", timeout=90, what="the run")  # type: ignore[union-attr]
        peak_kb = int(proc_status(worker.pid, "VmHWM"))
        assert group.stop(worker) == 0
    print(f"\nworker peak RSS with 100 MB of run output: {peak_kb / 1024:.0f} MB")
    assert peak_kb < 200 * 1024
    lines = store.run_logs(run_id, limit=100_000)
    assert sum(len(r.line) + 1 for r in lines) < 1_200_000
    assert any("dropped" in r.line for r in lines if r.stream == "orchd")


def test_a_new_run_starts_without_waiting_for_the_poll(tmp_path: Path, db_url: str, backend: str) -> None:
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [worker]
    poll_interval = "60s"
    [[deployments]]
    name = "now"
    command = ["true"]
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    with daemons(tmp_path) as group:
        group.start("orchd-worker", "--config", str(config))
        wait_for(lambda: "worker started" in group.output(), what="the worker")
        time.sleep(1.0)  # idle now: its next poll is a minute away
        created = datetime.now(UTC)
        run_id = store.create_run("now", created)
        # within the 60 s poll interval: only a wake-up (NOTIFY, the SQLite file's change) can have
        # started it; how soon is a figure (tests/bench "latency"), not a pass/fail
        row = wait_for(
            lambda: (r := store.get_run(run_id)) and r.state == "COMPLETED" and r, timeout=45, what="the run"
        )
    print(f"\n{backend}: created -> started {(row.started_at - created).total_seconds() * 1000:.0f} ms")


def test_database_restart_while_runs_are_running(
    tmp_path: Path, db_url: str, pg_server: PgServer, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("a restart of the database server is a PostgreSQL scenario")
    if pg_server.data_dir is None:
        pytest.skip("ORCHD_TEST_DATABASE_URL points at a server this test must not restart")
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [worker]
    heartbeat = "500ms"
    lease_timeout = "60s"
    [[deployments]]
    name = "steady"
    command = ["sh", "-c", "sleep 4; echo survived"]
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("steady", datetime.now(UTC))
    with daemons(tmp_path) as group:
        worker = group.start("orchd-worker", "--config", str(config))
        wait_for(lambda: store.get_run(run_id).state == "RUNNING", what="RUNNING")  # type: ignore[union-attr]
        store.engine.dispose()
        pg_server.stop()
        try:
            time.sleep(2)
            assert worker.poll() is None  # the worker rides out the outage
        finally:
            pg_server.start()

        def done() -> bool:
            try:
                return store.get_run(run_id).state == "COMPLETED"  # type: ignore[union-attr]
            except DatabaseUnavailable:
                return False

        wait_for(done, timeout=40, what="the run to be recorded after the restart")
        assert group.stop(worker) == 0
    assert [r.line for r in store.run_logs(run_id)] == ["survived"]

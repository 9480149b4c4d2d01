"""A database outage costs the daemons almost nothing: they wait with backoff instead of spinning,
keep their runs running, and carry on when the database returns (PostgreSQL stopped for real)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from orchd.config import Config
from orchd.db.store import Store
from orchd.errors import DatabaseUnavailable
from orchd.scheduler.daemon import Scheduler
from orchd.worker.daemon import Worker
from tests.conftest import MakeConfig
from tests.helpers import wait_for
from tests.pg import PgServer

OUTAGE = 3.0  # seconds the server is down
BODY = """
[worker]
heartbeat = "200ms"
lease_timeout = "60s"
[[deployments]]
name = "chatty"
command = ["sh", "-c", "i=0; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); sleep 0.1; done"]
"""


def _counting(obj: Any, method: str) -> list[int]:
    """Count the calls of ``obj.method`` (one per turn of a daemon's loop)."""
    calls = [0]
    original = getattr(obj, method)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, method, counted)
    return calls


def _chatty_run(make_config: MakeConfig, store: Store, pg_server: PgServer) -> tuple[Config, int, Worker]:
    """The config, a queued run of "chatty" and a worker for it, on a server the test may stop."""
    if pg_server.data_dir is None:
        pytest.skip("ORCHD_TEST_DATABASE_URL points at a server this test must not stop")
    config = make_config(BODY)
    store.sync(config, datetime.now(UTC))
    run_id = store.create_run("chatty", datetime.now(UTC))
    return config, run_id, Worker(config, store, ["default"], 2, name="w")


def _state(store: Store, run_id: int) -> str | None:
    try:
        row = store.get_run(run_id)
    except DatabaseUnavailable:
        return None
    return None if row is None else row.state


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_database_outage_is_waited_out_not_spun(
    make_config: MakeConfig, store: Store, pg_server: PgServer
) -> None:
    """The worker's loop stopped waiting once its heartbeat was overdue: PostgreSQL stopped for
    15 s cost it 14.95 CPU-s.  Each daemon's loop turns are counted while the server is down: a
    few per second at most (the worker's loop wakes twice a second to watch its runs' deadlines)."""
    config, run_id, worker = _chatty_run(make_config, store, pg_server)
    scheduler = Scheduler(config, store)
    worker_turns = _counting(worker, "_handle_events")
    scheduler_turns = _counting(scheduler, "_lead")
    stop = threading.Event()
    threads = [
        threading.Thread(target=worker.run, args=(stop,), daemon=True),
        threading.Thread(target=scheduler.run, args=(stop,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: _state(store, run_id) == "RUNNING", what="the run to start")
        pg_server.stop()
        try:
            before = worker_turns[0], scheduler_turns[0]
            time.sleep(OUTAGE)  # the outage itself, not a synchronisation
            during = worker_turns[0] - before[0], scheduler_turns[0] - before[1]
        finally:
            pg_server.start()
        assert during[0] < 5 * OUTAGE, f"the worker's loop turned {during[0]} times in {OUTAGE} s"
        assert during[1] < 5 * OUTAGE, f"the scheduler's loop turned {during[1]} times in {OUTAGE} s"
        wait_for(lambda: _state(store, run_id) == "COMPLETED", timeout=60, what="the run recorded after")
        lines = [r.line for r in store.run_logs(run_id)]
        assert lines == [f"line {i}" for i in range(60)]  # the output of the outage kept
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_worker_starting_into_an_outage_waits_it_out(
    make_config: MakeConfig, store: Store, pg_server: PgServer
) -> None:
    """The database answered the worker's start-up check and went away before it registered:
    the worker ended with exit 1 (seen in the chaos run); now it registers once the server is back."""
    _, run_id, worker = _chatty_run(make_config, store, pg_server)
    stop = threading.Event()
    failed: list[BaseException] = []

    def work() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # the test reports it, the thread would only print it
            failed.append(exc)

    pg_server.stop()
    thread = threading.Thread(target=work, daemon=True)
    try:
        thread.start()
        time.sleep(OUTAGE)  # the outage itself, not a synchronisation
        assert thread.is_alive() and not failed, failed
    finally:
        pg_server.start()
    try:
        wait_for(lambda: _state(store, run_id) == "COMPLETED", timeout=60, what="the run, after the outage")
        assert [w.name for w in store.workers()] == ["w"]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failed, failed

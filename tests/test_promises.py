"""Promises the README makes about workers, catch-up, claims, leadership and archived deployments,
each kept on both databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text
from structlog.testing import capture_logs

from orchd.config import Config, load_config
from orchd.db.locks import leadership_for
from orchd.db.store import Store
from orchd.errors import DatabaseError, OrchdError
from orchd.scheduler.daemon import Scheduler
from orchd.states import RunState
from orchd.worker.daemon import Worker
from tests.cli_support import Orchd, one_line_error
from tests.conftest import MakeConfig
from tests.helpers import daemons, history, pid_alive, store_for, wait_for, write_config

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------- B16: dead workers are shown dead


def test_a_worker_whose_leases_lapsed_is_offline_at_once(store: Store, make_config: MakeConfig) -> None:
    """`orchd status` showed a dead worker online for worker_timeout (2 min) after the reaper had
    already taken its runs (lease_timeout, 60 s)."""
    store.sync(make_config('[[deployments]]\nname = "d"\ncommand = ["true"]\n'), T0)
    lease = timedelta(seconds=60)
    for name in ("dead", "alive"):
        store.register_worker(name, "host", 1, ["default"], 1, T0)
        store.create_run("d", T0)
        (claimed,) = store.claim(name, ["default"], 1, T0, T0 + lease)
        store.start_many({claimed.id: 1}, name, T0)
    later = T0 + lease + timedelta(seconds=1)
    store.heartbeat("alive", later, later + lease, [])  # alive, it only lost track of its run
    crashed = store.upkeep(later, None, worker_timeout=120).crashed
    assert len(crashed) == 2
    status = {w.name: w.status_at(later, 120) for w in store.workers()}
    assert status == {"dead": "offline", "alive": "online"}


def test_a_worker_that_dies_of_an_error_kills_records_and_stops(
    store: Store, make_config: MakeConfig
) -> None:
    """A worker dying from an exception never marked itself stopped, and its runs waited for their
    leases (a minute) to be reaped."""
    config = make_config('[[deployments]]\nname = "long"\ncommand = ["sleep", "60"]\nretries = 1\n')
    store.sync(config, datetime.now(UTC))
    run_id = store.create_run("long", datetime.now(UTC))
    worker = Worker(config, store, ["default"], 1, name="w")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(threading.Event())
        except RuntimeError as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: store.get_run(run_id).state == "RUNNING", what="the run to start")  # type: ignore[union-attr]
    pid = store.get_run(run_id).pid  # type: ignore[union-attr]

    def boom(now: float) -> None:
        raise RuntimeError("boom")

    worker._check_cancellations = boom  # type: ignore[method-assign]  # a bug of the worker's own
    thread.join(timeout=30)
    assert not thread.is_alive() and [str(e) for e in failure] == ["boom"]
    assert pid is not None and not pid_alive(pid)
    assert ("RUNNING", "CRASHED") in history(store, run_id)
    crash = [h for h in store.run_history(run_id) if h.to_state == "CRASHED"]
    assert crash[0].reason == "worker failed: RuntimeError: boom"
    row = store.get_run(run_id)
    assert row is not None and (row.state, row.attempt) == ("SCHEDULED", 2)  # retried at once
    assert {w.name: w.status for w in store.workers()} == {"w": "stopped"}


# ---------------------------------------------------------------- B11: no head-of-line blocking

BACKLOG = """
[[pools]]
name = "narrow"
concurrency_limit = 1
[[deployments]]
name = "capped"
command = ["true"]
max_active_runs = 1
priority = 5
[[deployments]]
name = "crowd"
pool = "narrow"
command = ["true"]
priority = 5
[[deployments]]
name = "serial"
command = ["true"]
overlap = "queue"
priority = 5
[[deployments]]
name = "other"
command = ["true"]
"""


#: The same, with limits that only several active runs reach (2 of 2, and 2 + 1 of 3 in the pool).
COUNTED = (
    BACKLOG.replace("concurrency_limit = 1", "concurrency_limit = 3")
    .replace("max_active_runs = 1", "max_active_runs = 2")
    .replace(
        'name = "serial"\ncommand = ["true"]\noverlap = "queue"',
        'name = "crowd-too"\npool = "narrow"\ncommand = ["true"]',
    )
)


@pytest.mark.parametrize(
    ("config", "active"),
    [
        (BACKLOG, {"capped": 1, "crowd": 1, "serial": 1}),
        (COUNTED, {"capped": 2, "crowd": 2, "crowd-too": 1}),
    ],
    ids=["one-active-each", "counted"],
)
def test_free_slots_go_to_runs_that_may_run_however_long_the_blocked_backlog(
    store: Store, make_config: MakeConfig, config: str, active: dict[str, int]
) -> None:
    """A deployment at max_active_runs = 1 with 60 queued runs (and a full pool with 60, and one
    with overlap = queue) starved every other deployment: the claim's look-ahead (4 per slot, at
    least 50) held only them.  ``counted``: the limits are reached only by counting several
    active runs per deployment and per pool (2 + 1 in a pool of three; on PostgreSQL counted in
    SQL), and must read as full all the same."""
    store.sync(make_config(config), T0)
    for name, n in active.items():
        for _ in range(n):
            store.create_run(name, T0)
        claimed = store.claim(f"w-{name}", ["default", "narrow"], n, T0, T0 + timedelta(minutes=1))
        assert len(claimed) == n
        store.start_many({c.id: 1 for c in claimed}, f"w-{name}", T0)
        for _ in range(60):
            store.create_run(name, T0)
    other = store.create_run("other", T0 + timedelta(seconds=1))  # due later, lower priority
    claimed = store.claim("w", ["default", "narrow"], 4, T0 + timedelta(seconds=2), T0 + timedelta(minutes=1))
    assert [c.id for c in claimed] == [other]


def test_a_claim_that_finds_no_due_run_reads_nothing_else(store: Store, make_config: MakeConfig) -> None:
    """Most claims of a fleet find nothing (another worker took the run, or a freed slot finds
    the queue empty): such a claim is one statement, the look for due runs, and on PostgreSQL
    outside any transaction (autocommit: no BEGIN, no COMMIT); the limits' read of the active
    runs (here: runs of a capped deployment and a limited pool) comes only when there are
    candidates that a limit may turn away.  A due run that another claim in flight holds counts
    as none; once it is let go, it is claimed."""
    store.sync(make_config(COUNTED), T0)
    for name in ("capped", "crowd"):
        taken = [store.create_run(name, T0) for _ in range(2)]
        claimed = store.claim(f"w-{name}", ["default", "narrow"], 2, T0, T0 + timedelta(minutes=1))
        assert sorted(c.id for c in claimed) == taken
    later = store.create_run("other", T0 + timedelta(minutes=5))  # queued, not due yet
    at = T0 + timedelta(minutes=5)
    postgres = store.engine.dialect.name == "postgresql"
    seen: list[tuple[str, bool]] = []

    def record(conn: Connection, _cursor: object, statement: str, *_: object) -> None:
        seen.append((statement, postgres and conn.connection.dbapi_connection.autocommit))  # type: ignore[union-attr]

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        claimed = store.claim(
            "w", ["default", "narrow"], 4, T0 + timedelta(seconds=1), T0 + timedelta(minutes=1)
        )
        assert claimed == []
        statements = [statement for statement, _ in seen if statement != "BEGIN IMMEDIATE"]  # SQLite
        assert len(statements) == 1 and "runs.due_at <=" in statements[0], statements
        assert seen[-1][1] == postgres
        if postgres:  # the run is held by another claim in flight: none is free
            with store.engine.begin() as held:
                held.execute(text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": later})
                seen.clear()
                assert store.claim("w", ["default"], 1, at, at + timedelta(minutes=1)) == []
                assert len(seen) == 1 and seen[0][1], seen
        seen.clear()  # a run that no limit can turn away is claimed without the limits' read
        assert [c.id for c in store.claim("w", ["default"], 1, at, at + timedelta(minutes=1))] == [later]
        assert [s for s, _ in seen if "active.n" in s] == []
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


# ---------------------------------------------------------------- B15: runs of an archived deployment


def test_no_run_of_a_deployment_removed_from_the_config_starts(store: Store, make_config: MakeConfig) -> None:
    """A queued ad-hoc run and `run retry` still ran a deployment that `run create` refused as archived."""
    both = '[[deployments]]\nname = "gone"\ncommand = ["false"]\nretries = 2\n'
    both += '[[deployments]]\nname = "kept"\ncommand = ["true"]\n'
    store.sync(make_config(both), T0)
    finished, running, queued = (store.create_run("gone", T0) for _ in range(3))
    store.start_many(
        {c.id: 1 for c in store.claim("w", ["default"], 2, T0, T0 + timedelta(minutes=1))}, "w", T0
    )
    store.finish(finished, "w", RunState.COMPLETED, T0, exit_code=0)
    store.sync(make_config('[[deployments]]\nname = "kept"\ncommand = ["true"]\n'), T0)  # "gone" left
    row = store.get_run(queued)
    assert row is not None and row.state == "CANCELLED"
    assert store.run_history(queued)[-1].reason == "its deployment was removed from the config"
    with pytest.raises(OrchdError, match="removed from the config"):
        store.retry_run(finished, T0)
    # the running one finishes, and is not retried
    assert store.finish(running, "w", RunState.FAILED, T0, exit_code=1) == RunState.FAILED
    # and one that slipped into the queue (created as the config changed) is never claimed
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE runs SET state = 'SCHEDULED', due_at = :t WHERE id = :i"), {"t": T0, "i": queued}
        )
    assert store.claim("w", ["default"], 4, T0 + timedelta(seconds=1), T0 + timedelta(minutes=1)) == []


# ---------------------------------------------------------------- B12: a new leader reads the config


def test_a_scheduler_taking_over_leads_with_the_config_on_disk(
    tmp_path: Path, db_url: str, make_config: MakeConfig
) -> None:
    """A standby that took over re-applied the config it had loaded at its own start, archiving a
    deployment the old leader had added on SIGHUP and that is in the file."""
    path = tmp_path / "orchd.toml"
    env = {"ORCHD_STATE_DIR": str(tmp_path / "state")}
    one = '[scheduler]\nloop_interval = "100ms"\n[[deployments]]\nname = "a"\ncommand = ["true"]\n'
    write_config(path, db_url, one)
    started_with = load_config(path, env=env)
    stores = [store_for(db_url), store_for(db_url)]
    read = lambda: load_config(path, env=env)  # noqa: E731
    old, new = (Scheduler(started_with, s, read_config=read) for s in stores)
    stops = [threading.Event(), threading.Event()]
    hup = threading.Event()

    def reload() -> Config | None:
        if hup.is_set():
            hup.clear()
            return read()
        return None

    with capture_logs() as logs:
        threads = [
            threading.Thread(target=old.run, args=(stops[0], reload), daemon=True),
            threading.Thread(target=new.run, args=(stops[1],), daemon=True),
        ]
        threads[0].start()
        wait_for(lambda: any(e["event"] == "became leader" for e in logs), what="a leader")
        threads[1].start()
        write_config(path, db_url, one + '[[deployments]]\nname = "added"\ncommand = ["true"]\n')
        hup.set()  # the leader's SIGHUP
        wait_for(lambda: "added" in _live(stores[0]), what="the leader to apply the new config")
        stops[0].set()  # the leader goes; the standby takes over
        threads[0].join(timeout=10)
        wait_for(
            lambda: (
                sum(e["event"] == "became leader" for e in logs) == 2
                and any(e["event"] == "deployments synced" for e in logs[-5:])
            ),
            what="the standby to take over",
        )
        stops[1].set()
        threads[1].join(timeout=10)
    assert _live(stores[0]) == {"a", "added"}
    for store in stores:
        store.engine.dispose()


def _live(store: Store) -> set[str]:
    """The deployments in force (not archived)."""
    return {d.deployment.name for d in store.deployments()}


# ---------------------------------------------------------------- B14: db reset under running daemons

RESET = """
[scheduler]
loop_interval = "200ms"
[worker]
heartbeat = "300ms"
lease_timeout = "5s"
poll_interval = "300ms"
[[deployments]]
name = "tick"
command = ["true"]
schedules = [{ interval = "1s" }]
"""


def test_db_reset_is_refused_while_daemons_run_and_forced_they_recover(tmp_path: Path, db_url: str) -> None:
    """`orchd db reset --yes` under running daemons left them silently broken: status green with
    0 deployments, the worker never registered again."""
    config = write_config(tmp_path / "orchd.toml", db_url, RESET)
    orchd = Orchd(config, tmp_path / "state")
    store = store_for(db_url)

    def completed() -> int:
        try:
            return sum(1 for r in store.list_runs(limit=1000) if r.state == "COMPLETED")
        except DatabaseError:
            return 0

    try:
        with daemons(tmp_path) as group:
            group.start("orchd-scheduler", "--config", str(config))
            group.start("orchd-worker", "--config", str(config), "--name", "w1")
            wait_for(completed, what="a first run")
            refused = orchd("db", "reset", "--yes")
            one_line_error(refused, 1, "is in use by worker w1, scheduler ")
            assert "stop them first" in refused.stderr and completed() > 0
            assert orchd("db", "reset", "--yes", "--force").exit_code == 0
            wait_for(
                lambda: completed() > 0, timeout=30, what=f"runs again after the reset:\n{group.output()}"
            )
            assert [w.name for w in store.workers()] == ["w1"]
            assert [d.deployment.name for d in store.deployments()] == ["tick"]
            assert "registering again" in group.output() and "applying it again" in group.output()
    finally:
        store.engine.dispose()


# ---------------------------------------------------------------- B10: catch-up after downtime

EVERY_MINUTE = """
[scheduler]
horizon = "10m"
catchup_limit = 3
[[deployments]]
name = "latest"
command = ["true"]
schedules = [{ interval = "1m" }]
[[deployments]]
name = "all"
command = ["true"]
catchup = "all"
schedules = [{ interval = "1m", anchor = 2026-01-01T00:00:30Z }]
[[deployments]]
name = "none"
command = ["true"]
catchup = "none"
schedules = [{ interval = "1m", anchor = 2026-01-01T00:00:20Z }]
[[deployments]]
name = "queued"
command = ["true"]
overlap = "queue"
schedules = [{ interval = "1m", anchor = 2026-01-01T00:00:10Z }]
"""


@pytest.mark.parametrize("down", [timedelta(minutes=35), timedelta(minutes=8)])
def test_catch_up_governs_the_runs_planned_before_a_downtime(
    store: Store, make_config: MakeConfig, down: timedelta
) -> None:
    """`make run` for a minute, stopped 35 minutes: the 18 runs it had planned all started within
    0.15 s on restart, although catchup = "latest" promises only the most recent.  Now catch-up
    treats them as it treats the fire times never planned, over both together (8 minutes down:
    all were planned; 35: the most recent were not)."""
    config = make_config(EVERY_MINUTE)
    clock = Clock(T0)
    before = Scheduler(config, store, clock=clock)
    before.apply_config()
    before.tick()  # plans 10 minutes ahead, and records itself as leader
    clock.now = T0 + down
    after = Scheduler(config, store, clock=clock)
    after.name = "restarted"  # another process: another name
    lock = leadership_for(store.engine, config.database)
    try:
        assert after._lead(lock, False)
        after.tick()
    finally:
        lock.release()
    floor = clock.now - timedelta(seconds=3)
    due = {d: _overdue(store, d, floor) for d in ("latest", "all", "none", "queued")}
    assert len(due["latest"]) == 1 and due["latest"][0] > floor - timedelta(minutes=1)
    assert len(due["all"]) == 3 and due["all"][-1] > floor - timedelta(minutes=1)
    assert due["none"] == []
    if down < timedelta(minutes=10):  # overlap deployments wait by their own rule, not catch-up's
        assert len(due["queued"]) == 8


def _overdue(store: Store, deployment: str, floor: datetime) -> list[datetime]:
    runs = store.list_runs(deployment=deployment, limit=500)
    return sorted(r.scheduled_for for r in runs if r.state == "SCHEDULED" and r.scheduled_for < floor)


def test_a_failover_is_no_downtime(store: Store, make_config: MakeConfig) -> None:
    config = make_config(EVERY_MINUTE)
    clock = Clock(T0)
    before = Scheduler(config, store, clock=clock)
    before.apply_config()
    before.tick()
    clock.now = T0 + timedelta(minutes=5, seconds=5)
    with store.engine.begin() as conn:  # the old leader recorded itself a few seconds before it died
        conn.execute(text("UPDATE schedulers SET last_tick_at = :t"), {"t": T0 + timedelta(minutes=5)})
    after = Scheduler(config, store, clock=clock)
    after.name = "standby"
    lock = leadership_for(store.engine, config.database)
    try:
        assert after._lead(lock, False)
    finally:
        lock.release()
    assert not [r for r in store.list_runs(limit=500) if r.state == "MISSED"]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


LEADER_SESSION = (
    "SELECT a.pid, a.state_change FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)


def test_a_leader_whose_session_ends_knows_it_at_its_next_tick(
    store: Store, make_config: MakeConfig, backend: str
) -> None:
    """The leader asks the server about its lock only every few seconds, but looks at its session
    before every tick: one the server ended (a restart, an administrator) is lost at once.  In
    between, held() costs no query (it was one a second: most of an idle scheduler's CPU)."""
    if backend != "postgresql":
        pytest.skip("the advisory lock is PostgreSQL's; SQLite's flock is held until the process ends")
    config = make_config()
    lock, standby = (leadership_for(store.engine, config.database) for _ in range(2))
    try:
        assert lock.acquire() and lock.held()
        with store.engine.connect() as conn:
            before = conn.execute(text(LEADER_SESSION)).one()
        assert all(lock.held() for _ in range(20))
        with store.engine.connect() as conn:
            assert conn.execute(text(LEADER_SESSION)).one() == before  # no statement since
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": before.pid}).scalar()
        wait_for(standby.acquire, timeout=10, what="the standby to take the lock")
        assert not lock.held()
    finally:
        lock.release()
        standby.release()

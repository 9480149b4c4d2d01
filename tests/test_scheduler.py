"""Materialization on both databases: idempotent ticks, config re-applied, concurrent schedulers,
catch-up after downtime, archived deployments and edited schedules, and the reaper."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

import orchd.db.deployments
from orchd.config import load_config
from orchd.db.engine import make_engine
from orchd.db.schema import deployments, runs
from orchd.db.store import Store
from orchd.scheduler.daemon import Scheduler
from orchd.states import RunState
from tests.conftest import MakeConfig
from tests.helpers import history, reap, state_of

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
EVERY_MINUTE = """
[scheduler]
horizon = "10m"
catchup = "{catchup}"

[[deployments]]
name = "tick"
command = ["true"]
schedules = [{{ interval = "1m" }}]
"""


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _times(store: Store, state: str | None = None) -> list[datetime]:
    stmt = select(runs.c.scheduled_for).order_by(runs.c.scheduled_for)
    if state:
        stmt = stmt.where(runs.c.state == state)
    with store.read() as conn:
        return list(conn.execute(stmt).scalars())


def _scheduler(
    make_config: MakeConfig, store: Store, clock: Clock, body: str = EVERY_MINUTE, catchup: str = "latest"
) -> Scheduler:
    scheduler = Scheduler(make_config(body.format(catchup=catchup)), store, clock=clock)
    scheduler.sync()
    return scheduler


def test_tick_materializes_up_to_the_horizon_once(store: Store, make_config: MakeConfig) -> None:
    clock = Clock(T0 + timedelta(seconds=5))
    scheduler = _scheduler(make_config, store, clock)
    first = scheduler.tick()
    assert first.created == 10
    assert _times(store) == [T0 + timedelta(minutes=m) for m in range(1, 11)]
    assert scheduler.tick().created == 0  # the same tick again creates nothing
    clock.now += timedelta(minutes=1)
    assert scheduler.tick().created == 1
    assert len(_times(store)) == len(set(_times(store))) == 11


def test_reapplying_unchanged_config_a_hundred_times_creates_nothing(
    store: Store, make_config: MakeConfig
) -> None:
    clock = Clock(T0)
    scheduler = _scheduler(make_config, store, clock)
    scheduler.tick()
    before = _times(store)
    with store.read() as conn:
        stamp = conn.execute(select(deployments.c.updated_at)).scalar_one()
    for _ in range(100):
        report = store.sync(scheduler.config, clock())
        assert (report.created, report.updated, report.schedules_added, report.schedules_removed) == (
            0,
            0,
            0,
            0,
        )
        scheduler.tick()
    assert _times(store) == before
    with store.read() as conn:
        assert conn.execute(select(deployments.c.updated_at)).scalar_one() == stamp


def test_a_sync_reads_the_schedules_a_few_deployments_at_a_time(
    store: Store, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schedule rows are read a few hundred deployments at a time (100,000 schedules at once took
    45 MB); across reads, each deployment's schedules are still added, kept or archived."""
    monkeypatch.setattr(orchd.db.deployments, "_DEPLOYMENTS_READ", 2)

    def config(names: str, second: str = "2m") -> str:
        return "".join(
            f'[[deployments]]\nname = "{n}"\ncommand = ["true"]\n'
            f'schedules = [{{ interval = "1m" }}, {{ interval = "{second if n == "b" else "2m"}" }}]\n'
            for n in names
        )

    now = T0
    first = store.sync(make_config(config("abcde")), now)
    assert (first.created, first.schedules_added, first.schedules_removed) == (5, 10, 0)
    again = store.sync(make_config(config("abc", second="3m")), now)
    assert (again.created, again.archived, again.schedules_added, again.schedules_removed) == (0, 2, 1, 5)
    same = store.sync(make_config(config("abc", second="3m")), now)
    assert (same.created, same.updated, same.archived, same.schedules_added, same.schedules_removed) == (
        0,
        0,
        0,
        0,
        0,
    )


def test_two_schedulers_at_once_never_duplicate(store: Store, make_config: MakeConfig, db_url: str) -> None:
    body = """
    [scheduler]
    horizon = "1h"
    max_scheduled_runs = 1000
    [[deployments]]
    name = "a"
    command = ["true"]
    schedules = [{ interval = "10s" }, { cron = "* * * * *", timezone = "Europe/Berlin" }]
    [[deployments]]
    name = "b"
    command = ["true"]
    schedules = [{ cron = "*/5 * * * * *" }]
    """
    config = make_config(body)
    engines = [
        make_engine(load_config("/dev/null", env={"ORCHD_DATABASE_URL": db_url}).database) for _ in range(2)
    ]
    schedulers = [Scheduler(config, Store(e, f"s{i}"), clock=Clock(T0)) for i, e in enumerate(engines)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(s: Scheduler) -> None:
        try:
            start.wait(timeout=10)
            for minute in range(5):
                s.clock.now = T0 + timedelta(minutes=minute)  # type: ignore[attr-defined]
                s.sync()
                s.tick()
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with store.read() as conn:
        keys = conn.execute(select(runs.c.deployment_id, runs.c.schedule_key, runs.c.scheduled_for)).all()
    assert len(keys) > 700
    assert [k for k, n in Counter(keys).items() if n > 1] == []
    for e in engines:
        e.dispose()


def test_catchup_latest_after_downtime(store: Store, make_config: MakeConfig) -> None:
    clock = Clock(T0)
    scheduler = _scheduler(make_config, store, clock, catchup="latest")
    scheduler.tick()
    clock.now = T0 + timedelta(hours=2)  # down for two hours: 110 fire times missed
    scheduler.tick()
    missed = [t for t in _times(store) if T0 + timedelta(minutes=10) < t < clock.now - timedelta(seconds=5)]
    assert missed == [T0 + timedelta(minutes=119)]


def test_catchup_none_after_downtime(store: Store, make_config: MakeConfig) -> None:
    clock = Clock(T0)
    scheduler = _scheduler(make_config, store, clock, catchup="none")
    scheduler.tick()
    clock.now = T0 + timedelta(hours=2, seconds=30)
    scheduler.tick()
    assert [t for t in _times(store) if T0 + timedelta(minutes=10) < t < clock.now] == []
    assert min(t for t in _times(store) if t > clock.now) == T0 + timedelta(hours=2, minutes=1)


def test_catchup_all_is_bounded(store: Store, make_config: MakeConfig) -> None:
    clock = Clock(T0)
    body = EVERY_MINUTE.replace('catchup = "{catchup}"', 'catchup = "all"\ncatchup_limit = 30')
    scheduler = _scheduler(make_config, store, clock, body=body)
    scheduler.tick()
    clock.now = T0 + timedelta(hours=2)
    scheduler.tick()
    missed = [t for t in _times(store) if T0 + timedelta(minutes=10) < t < clock.now - timedelta(seconds=5)]
    assert missed == [T0 + timedelta(minutes=m) for m in range(90, 120)]


def test_removed_deployment_is_archived_and_its_future_runs_dropped(
    store: Store, make_config: MakeConfig
) -> None:
    clock = Clock(T0)
    scheduler = _scheduler(make_config, store, clock)
    scheduler.tick()
    due = store.create_run("tick", T0)  # due now, never claimed
    clock.now = T0 + timedelta(seconds=1)
    scheduler.reload(make_config(""))
    scheduler.apply_config()
    with store.read() as conn:
        archived = conn.execute(select(deployments.c.archived_at)).scalar_one()
    assert archived is not None
    assert state_of(store, due) == "CANCELLED"  # no run of a removed deployment starts (ad-hoc too)
    assert _times(store, "SCHEDULED") == []
    scheduler.reload(make_config(EVERY_MINUTE.format(catchup="latest")))
    scheduler.apply_config()
    with store.read() as conn:
        assert conn.execute(select(deployments.c.archived_at)).scalar_one() is None
    assert scheduler.tick().created == 10


def test_edited_schedule_replaces_its_future_runs(store: Store, make_config: MakeConfig) -> None:
    clock = Clock(T0)
    scheduler = _scheduler(make_config, store, clock)
    scheduler.tick()
    scheduler.reload(make_config(EVERY_MINUTE.format(catchup="latest").replace('"1m"', '"2m"')))
    scheduler.apply_config()
    scheduler.tick()
    assert _times(store, "SCHEDULED") == [T0 + timedelta(minutes=m) for m in range(0, 11, 2)]
    assert _times(store, "CANCELLED") == [T0]  # due, unclaimed, of the old definition


def test_cron_in_a_timezone_across_dst(store: Store, make_config: MakeConfig) -> None:
    body = """
    [scheduler]
    horizon = "3d"
    [[deployments]]
    name = "daily"
    command = ["true"]
    schedules = [{ cron = "30 1 * * *", timezone = "America/New_York" }]
    """
    clock = Clock(datetime(2026, 10, 31, 0, 0, tzinfo=UTC))  # fall back on Nov 1st, 02:00 EDT
    scheduler = Scheduler(make_config(body), store, clock=clock)
    scheduler.sync()
    scheduler.tick()
    assert _times(store) == [
        datetime(2026, 10, 31, 5, 30, tzinfo=UTC),  # 01:30 EDT
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT, once: not again at 01:30 EST
        datetime(2026, 11, 2, 6, 30, tzinfo=UTC),  # 01:30 EST
    ]


def test_reaper_crashes_expired_leases_and_retries(store: Store, make_config: MakeConfig) -> None:
    config = make_config(
        '[[deployments]]\nname = "job"\ncommand = ["true"]\nretries = 1\nretry_delay = "0s"\n'
    )
    store.sync(config, T0)
    run_id = store.create_run("job", T0)
    assert store.claim("w1", ["default"], 1, T0, T0 + timedelta(seconds=30))
    assert (
        reap(store, T0 + timedelta(seconds=29)) == []
    )  # a claimed run that never started: judged by its lease
    assert reap(store, T0 + timedelta(seconds=31)) == [run_id]
    assert state_of(store, run_id) == RunState.SCHEDULED
    assert history(store, run_id)[-2:] == [("PENDING", "CRASHED"), ("CRASHED", "SCHEDULED")]
    later = T0 + timedelta(minutes=1)
    assert store.claim("w2", ["default"], 1, later, later + timedelta(seconds=30))[0].attempt == 2
    assert store.start_many({run_id: 123}, "w2", later)
    assert reap(store, later + timedelta(seconds=31)) == [run_id]
    assert state_of(store, run_id) == RunState.CRASHED  # no attempts left


def test_the_upkeep_says_when_it_will_next_have_work(store: Store, make_config: MakeConfig) -> None:
    """An idle scheduler looks again when the earliest lease, worker silence or misfire falls
    due (within bounds), not every 2 s: what it reads must be exactly that moment."""
    store.sync(make_config('[[deployments]]\nname = "job"\ncommand = ["true"]\n'), T0)
    assert store.upkeep(T0, 60, 120).next_due is None  # nothing live
    store.register_worker("w1", "host", 1, ["default"], 1, T0)
    assert store.upkeep(T0, 60, 120).next_due == T0 + timedelta(seconds=120)  # its silence
    waiting = store.create_run("job", T0 + timedelta(seconds=10))
    assert store.upkeep(T0, 60, 120).next_due == T0 + timedelta(seconds=70)  # misfire_grace after due
    assert store.upkeep(T0, None, 120).next_due == T0 + timedelta(seconds=120)  # no misfires
    claimed_at = T0 + timedelta(seconds=10)
    (claimed,) = store.claim("w1", ["default"], 1, claimed_at, claimed_at + timedelta(seconds=30))
    assert claimed.id == waiting
    upkeep = store.upkeep(claimed_at + timedelta(seconds=29), 60, 120)
    assert (upkeep.crashed, upkeep.next_due) == ([], claimed_at + timedelta(seconds=30))  # its lease
    upkeep = store.upkeep(claimed_at + timedelta(seconds=31), 60, 120)
    assert upkeep.crashed == [waiting] and upkeep.next_due == claimed_at + timedelta(seconds=30)
    scheduler = _scheduler(make_config, store, Clock(T0))
    wait = scheduler._upkeep_wait  # lease_timeout 60 s: at most 10 s, at least 2 s
    assert [wait(None, T0), wait(T0 + timedelta(seconds=5), T0), wait(T0 - timedelta(seconds=1), T0)] == [
        10.0,
        5.0,
        2.0,
    ]
    assert wait(T0 + timedelta(hours=1), T0) == 10.0


def test_a_reaped_worker_cannot_record_anything_on_the_retry(store: Store, make_config: MakeConfig) -> None:
    """A worker cut off past its lease comes back to find its run reaped and RUNNING again on
    another worker: its start, outcome and hand-back must not land on the retry."""
    config = make_config(
        '[[deployments]]\nname = "job"\ncommand = ["true"]\nretries = 1\nretry_delay = "0s"\n'
    )
    store.sync(config, T0)
    run_id = store.create_run("job", T0)
    assert store.claim("w1", ["default"], 1, T0, T0 + timedelta(seconds=30))
    assert reap(store, T0 + timedelta(seconds=31)) == [run_id]
    later = T0 + timedelta(minutes=1)
    assert store.claim("w2", ["default"], 1, later, later + timedelta(seconds=30))[0].attempt == 2
    assert store.start_many({run_id: 1}, "w1", later) == []  # w1's spawn came too late
    assert store.start_many({run_id: 2}, "w2", later) == [run_id]
    assert store.complete_many([run_id], "w1", later) == []
    assert store.finish(run_id, "w1", RunState.CRASHED, later, error="fenced") is None
    assert store.release([run_id], "w1", later, "shutting down") == []
    assert state_of(store, run_id) == RunState.RUNNING
    assert store.complete_many([run_id], "w2", later) == [run_id]


def test_jitter_delays_due_times_but_not_the_key(store: Store, make_config: MakeConfig) -> None:
    body = """
    [scheduler]
    horizon = "10m"
    [[deployments]]
    name = "spread"
    command = ["true"]
    schedules = [{ interval = "1m", jitter = "20s" }]
    """
    scheduler = Scheduler(make_config(body), store, clock=Clock(T0 + timedelta(seconds=5)))
    scheduler.sync()
    scheduler.tick()
    scheduler.tick()
    with store.read() as conn:
        rows = conn.execute(select(runs.c.scheduled_for, runs.c.due_at).order_by(runs.c.scheduled_for)).all()
    assert [r.scheduled_for for r in rows] == [T0 + timedelta(minutes=m) for m in range(1, 11)]
    delays = [(r.due_at - r.scheduled_for).total_seconds() for r in rows]
    assert all(0 <= d < 20 for d in delays) and len(set(delays)) > 1


def test_rrule_schedule_materializes(store: Store, make_config: MakeConfig) -> None:
    body = """
    [scheduler]
    horizon = "2d"
    [[deployments]]
    name = "weekday-mornings"
    command = ["true"]
    [[deployments.schedules]]
    rrule = "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=9;BYMINUTE=0"
    anchor = 2026-01-01T00:00:00
    timezone = "Europe/Berlin"
    """
    scheduler = Scheduler(
        make_config(body), store, clock=Clock(datetime(2026, 11, 20, 12, tzinfo=UTC))
    )  # a Friday
    scheduler.sync()
    scheduler.tick()
    assert _times(store) == []  # Friday 09:00 is past, Monday is beyond the two-day horizon
    scheduler.clock.now = datetime(2026, 11, 22, 12, tzinfo=UTC)  # type: ignore[attr-defined]
    scheduler.tick()
    assert _times(store) == [datetime(2026, 11, 23, 8, tzinfo=UTC), datetime(2026, 11, 24, 8, tzinfo=UTC)]


def test_retention_prunes_old_finished_runs_with_their_history(store: Store, make_config: MakeConfig) -> None:
    config = make_config('[[deployments]]\nname = "job"\ncommand = ["true"]\n')
    store.sync(config, T0)
    old_done = store.create_run("job", T0)
    old_waiting = store.create_run("job", T0, at=T0 + timedelta(days=40))  # created long ago, still waiting
    recent = store.create_run("job", T0 + timedelta(days=29))
    store.append_logs([{"run_id": old_done, "attempt": 1, "at": T0, "stream": "stdout", "line": "x"}])
    for run_id, at in ((old_done, T0), (recent, T0 + timedelta(days=29))):
        assert store.claim("w", ["default"], 1, at, at + timedelta(minutes=1))[0].id == run_id
        assert store.start_many({run_id: 1}, "w", at)
        store.complete_many([run_id], "w", at)
    pruned = store.prune(T0 + timedelta(days=31), retention=30 * 86400)
    assert pruned == 1
    assert store.get_run(old_done) is None
    assert store.run_history(old_done) == [] and store.run_logs(old_done) == []
    assert store.get_run(old_waiting) is not None  # never finished: not history yet
    assert store.get_run(recent) is not None


def test_heartbeat_extends_only_the_runs_the_worker_holds(store: Store, make_config: MakeConfig) -> None:
    """A run the worker lost track of (its RUNNING write failed, or a dead predecessor of the same
    name held it) must not be kept alive by the worker's heartbeat: it expires and is reaped."""
    store.sync(make_config('[[deployments]]\nname = "job"\ncommand = ["true"]\n'), T0)
    held, forgotten = store.create_run("job", T0), store.create_run("job", T0)
    assert len(store.claim("w", ["default"], 2, T0, T0 + timedelta(seconds=30))) == 2
    later = T0 + timedelta(seconds=20)
    assert store.heartbeat("w", later, later + timedelta(seconds=30), [held]).held == {held: RunState.PENDING}
    assert reap(store, T0 + timedelta(seconds=31)) == [forgotten]
    assert state_of(store, held) == "PENDING"

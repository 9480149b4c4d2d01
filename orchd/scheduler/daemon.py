"""The scheduler daemon: keeps deployments in sync with config, materializes runs, does the upkeep.

The loop reads like its duties.  As leader, each tick materializes the schedules whose cursor is
inside the horizon (the only ones it touches, found through an index), reaps expired leases,
marks stale runs MISSED and silent workers offline, and prunes history past retention in small
batches.  As a standby it only tries to become leader.  Ticks are idempotent, so two schedulers
at once, or one killed mid-tick and restarted, never create a run twice: the unique key on
(deployment, schedule key, scheduled_for) absorbs the repeat.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from orchd.backoff import Backoff
from orchd.config import Config
from orchd.db.locks import Leadership, leadership_for
from orchd.db.store import Store
from orchd.errors import ConfigError, DatabaseError, DatabaseUnavailable
from orchd.logging import get_logger
from orchd.models import DueSchedule, Materialization, TickReport
from orchd.notify import Notifier
from orchd.observer import Observer
from orchd.scheduler.notifications import Dispatcher
from orchd.scheduler.plan import missed_while_down, plan

log = get_logger("orchd.scheduler")
BATCH = 1000
_PRUNE_EVERY = 60.0
#: How often a scheduler records itself (leader or standby) in the schedulers table, seconds:
#: what `orchd status` reads, so "seen 8s ago" is normal however short the tick.
SEEN_EVERY = 10.0
#: No leader recorded itself for this long: the scheduler was down (a failover takes a second).
DOWNTIME = 3 * SEEN_EVERY
#: Reaping, misfires, offline workers: the upkeep looks again when the earliest lease end,
#: misfire or worker silence it saw falls due, but not sooner than this (a crash is seen within
#: lease + this) and not later than a few seconds: a run claimed meanwhile may have a short lease.
_UPKEEP_EVERY = 2.0
_UPKEEP_AT_MOST = 10.0
_RECHECK_EVERY = 30.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], datetime] = utcnow,
        stop: threading.Event | None = None,
        observer: Observer | None = None,
        read_config: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        #: The config as on disk now (ConfigError if broken): what a scheduler taking over leads with.
        self.read_config = read_config
        self.store = store
        self.clock = clock
        self.observer = observer or Observer()
        #: Set when the daemon is asked to stop: a long materialization ends between two schedules.
        self.stop = stop or threading.Event()
        self._broken: set[int] = set()  # schedules whose fire times could not be computed (logged once)
        #: After a reload: the config last applied, kept in force if the database refuses the new one.
        self._previous: Config | None = None
        self._needs_sync = False
        self.host = socket.gethostname()
        self.name = f"{self.host}-{os.getpid()}"
        self.started_at = clock()
        self._next_prune = 0.0
        self._next_seen = 0.0
        self._next_upkeep = 0.0
        self._recheck_at = 0.0
        self._earliest: datetime | None = None
        #: The config whose active schedules _status counted, and their number.
        self._counted: Config | None = None
        self._schedules = 0
        #: Notifications: matched in the tick, sent from threads of their own while leader.
        self.notifications = Dispatcher(store, lambda: self.config, clock)

    def sync(self) -> None:
        self._earliest = None  # schedules may have changed: look again on the next tick
        report = self.store.sync(self.config, self.clock())
        log.info(
            "deployments synced",
            deployments=len(self.config.deployments),
            created=report.created,
            updated=report.updated,
            archived=report.archived,
            schedules_added=report.schedules_added,
            schedules_removed=report.schedules_removed,
        )

    def reload(self, config: Config) -> None:
        """Take a new config (SIGHUP).  The leader applies it (``apply_config``) before its next
        tick, or when it becomes leader; if the database refuses it, the one in force stays."""
        self._previous = self._previous or self.config
        self.config, self._needs_sync = config, True

    def apply_config(self) -> None:
        """Sync the config in force.  One the database refuses (a value validation let through)
        never ends the daemon: after a reload the previous config stays in force, as README
        promises; at start it is a configuration error (exit 78, no restart loop)."""
        try:
            self.sync()
        except DatabaseUnavailable:
            raise  # an outage: waited out, and the sync retried
        except Exception as exc:
            error = exc.reason if isinstance(exc, DatabaseError) else str(exc) or type(exc).__name__
            if self._previous is None:
                raise ConfigError(f"the database refused the config: {error}") from None
            log.error(
                "reload refused: the database refused the new config; keeping the running one", error=error
            )
            self.config, self._previous = self._previous, None
            self.sync()
        self._previous = None
        self._needs_sync = False

    def tick(self) -> TickReport:
        """One pass of the leader's duties.  Idle ticks cost no query: the earliest cursor is
        remembered, so schedules are only looked at when one comes inside the horizon (or every
        half minute, in case another process applied config); upkeep runs every few seconds."""
        began = time.monotonic()
        now = self.clock()
        cfg = self.config.scheduler
        horizon_end = now + timedelta(seconds=cfg.horizon)
        report = TickReport()
        earliest = self._earliest
        recheck = earliest is None or time.monotonic() >= self._recheck_at
        if recheck and self.store.live_deployments() < len(self.config.deployments):
            # the database lost deployments of the config (`orchd db reset` under this scheduler)
            log.warning("deployments of the config are missing from the database: applying it again")
            self.apply_config()
        if recheck or (earliest is not None and horizon_end >= earliest):
            self._materialize(now, horizon_end, report)
        if time.monotonic() >= self._next_upkeep:
            upkeep = self.store.upkeep(now, cfg.misfire_grace, cfg.worker_timeout)
            report.crashed, report.missed = len(upkeep.crashed), len(upkeep.missed)
            self._next_upkeep = time.monotonic() + self._upkeep_wait(upkeep.next_due, now)
        self._notify()
        if cfg.retention and time.monotonic() >= self._next_prune:
            report.pruned = self.store.prune(now, cfg.retention)
            self._next_prune = time.monotonic() + (0 if report.pruned else _PRUNE_EVERY)
        self._seen("leader", now)
        report.seconds = time.monotonic() - began
        self.observer.ticked(report, now)
        if report.created or report.crashed or report.missed or report.pruned:
            log.info(
                "tick",
                runs_created=report.created,
                runs_crashed=report.crashed,
                runs_missed=report.missed,
                runs_pruned=report.pruned,
                schedules=report.schedules,
            )
        return report

    def _upkeep_wait(self, next_due: datetime | None, now: datetime) -> float:
        """Seconds until the next upkeep: when its next work falls due, within _UPKEEP_EVERY and
        the longest a new run's lease could go unseen (a quarter of ``worker.lease_timeout``, at
        most _UPKEEP_AT_MOST; leases and heartbeats are written by workers, not announced)."""
        longest = max(_UPKEEP_EVERY, min(_UPKEEP_AT_MOST, self.config.worker.lease_timeout / 4))
        if next_due is None:
            return longest
        return max(_UPKEEP_EVERY, min(longest, (next_due - now).total_seconds()))

    def _notify(self) -> None:
        """Match new events to the notification rules.  A database error is the tick's (waited out
        like any outage); any other failure is logged and scheduling goes on without it."""
        try:
            self.notifications.match()
        except DatabaseError:
            raise
        except Exception as exc:
            log.error("notifications: matching failed", error=f"{type(exc).__name__}: {exc}")

    def _materialize(self, now: datetime, horizon_end: datetime, report: TickReport) -> None:
        """Runs for every schedule whose cursor is inside the horizon, a page at a time."""
        cfg = self.config.scheduler
        tolerance = timedelta(seconds=2 * cfg.loop_interval + 1)
        after: tuple[datetime, int] | None = None
        while not self.stop.is_set():
            due = self.store.due_schedules(horizon_end, BATCH, after=after)
            if not due:
                break
            plans = []
            for schedule in due:
                if self.stop.is_set():
                    return  # nothing of this page is written: the next scheduler does it
                planned = self._plan(schedule, now, horizon_end, tolerance)
                if planned is not None:
                    plans.append(planned)
            report.schedules += len(due)
            report.created += self.store.materialize(plans, now)
            if len(due) < BATCH:
                break
            after = (due[-1].next_fire_at, due[-1].id)
        self._earliest = self.store.earliest_cursor()
        self._recheck_at = time.monotonic() + _RECHECK_EVERY

    def _plan(
        self, schedule: DueSchedule, now: datetime, horizon_end: datetime, tolerance: timedelta
    ) -> Materialization | None:
        """The plan of one schedule; a schedule whose fire times cannot be computed is logged (once)
        and left alone, so one bad definition never stops the others, nor the scheduler."""
        cfg = self.config.scheduler
        try:
            planned = plan(
                schedule,
                now,
                horizon_end,
                max_future=cfg.max_scheduled_runs,
                catchup_limit=cfg.catchup_limit,
                tolerance=tolerance,
            )
        except Exception as exc:
            if schedule.id not in self._broken:
                self._broken.add(schedule.id)
                log.error(
                    "schedule skipped: its fire times cannot be computed",
                    deployment=schedule.deployment,
                    schedule=schedule.spec.describe(),
                    error=f"{type(exc).__name__}: {exc}",
                )
            return None
        self._broken.discard(schedule.id)
        return planned

    def _seen(self, role: str, now: datetime, force: bool = False) -> None:
        """Record this scheduler in the database (for `orchd status`), every few seconds only."""
        if force or time.monotonic() >= self._next_seen:
            self.store.scheduler_seen(self.name, self.host, os.getpid(), role, now, self.started_at)
            self._next_seen = time.monotonic() + SEEN_EVERY

    def run(
        self,
        stop: threading.Event,
        reload: Callable[[], Config | None] | None = None,
        notifier: Notifier | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        """Tick every ``loop_interval`` while leader, until ``stop`` is set.  A database outage is
        logged and waited out with backoff; it never ends the loop."""
        notify = notifier or Notifier()
        lock = leadership or leadership_for(self.store.engine, self.config.database)
        self.stop = stop
        leader = False
        notify.ready("started: electing a leader")
        backoff = Backoff(1.0, 30.0)
        self.notifications.start()
        try:
            while not stop.is_set():
                notify.watchdog()
                try:
                    if reload is not None and (new := reload()) is not None:
                        notify.reloading()
                        self.reload(new)
                        notify.ready(self._status(leader))
                    leader = self._lead(lock, leader)
                    if leader and self._needs_sync:
                        self.apply_config()
                    self.observer.leading(leader)
                    (self.notifications.leading.set if leader else self.notifications.leading.clear)()
                    if leader:
                        self.tick()
                    else:
                        self._seen("standby", self.clock())
                    backoff.succeeded()
                    notify.status(self._status(leader))
                except DatabaseError as exc:  # an outage, or a statement refused (tables reset under it)
                    self.observer.database_error("scheduler", exc.reason)
                    delay = backoff.failed()
                    what = "unavailable" if isinstance(exc, DatabaseUnavailable) else "error"
                    (log.warning if what == "unavailable" else log.error)(
                        f"database {what}, retrying", error=exc.reason, retry_in=delay
                    )
                    notify.status(f"database {what}: {exc.reason}; retrying in {delay:.0f}s")
                stop.wait(backoff.delay or self.config.scheduler.loop_interval)
        finally:
            self.notifications.leading.clear()
            self.notifications.stop()
            lock.release()
            notify.stopping()

    def _lead(self, lock: Leadership, leader: bool) -> bool:
        if leader and not lock.held():
            log.warning("leadership lost: standing by")
            return False
        if not leader and lock.acquire():
            log.info("became leader", scheduler=self.name)
            self._reread()
            self.apply_config()
            self._catch_up_materialized()
            self._seen("leader", self.clock(), force=True)
            return True
        return leader

    def _catch_up_materialized(self) -> None:
        """Taking over after a downtime (no leader recorded itself for DOWNTIME), the runs that
        schedules materialized before it and that nobody ran are governed by catch-up like the
        fire times never materialized: with ``latest`` (the default) a scheduler stopped for 35
        minutes no longer starts the 18 runs it had planned all at once, only the most recent.
        A failover (the old leader seen seconds ago) is no downtime: nothing is touched."""
        now = self.clock()
        cfg = self.config.scheduler
        since = self.store.last_leader_seen(other_than=self.name)
        if since is not None and now - since < timedelta(seconds=DOWNTIME):
            return
        floor = now - timedelta(seconds=2 * cfg.loop_interval + 1)
        overdue = self.store.overdue_materialized(since, floor)
        turned_away = missed_while_down(overdue, floor, cfg.catchup_limit)
        if turned_away:
            reason = "its fire time passed while no scheduler ran; catch-up runs only what its policy keeps"
            missed = self.store.miss(turned_away, now, reason)
            log.info("catch-up after downtime", runs_missed=len(missed), overdue=len(overdue))

    def _reread(self) -> None:
        """A scheduler taking over leads with the config on disk now, not the one it loaded when it
        started as a standby: the old leader may have applied a newer one (SIGHUP), which a sync of
        the stale one would undo (archiving the deployments it added).  A config broken on disk
        is logged, and the one in memory kept."""
        if self.read_config is None:
            return
        try:
            fresh = self.read_config()
        except ConfigError as exc:
            log.error("taking over with the config loaded before: the file is refused", error=str(exc))
            return
        if fresh != self.config:
            log.info("taking over with the config as it is on disk now", path=str(fresh.path))
            self._previous = self._previous or self.config
            self.config = fresh

    def _status(self, leader: bool) -> str:
        if not leader:
            return "standby: another scheduler is leader"
        if self._counted is not self.config:  # once per config: 100,000 schedules took ms a tick
            self._counted = self.config
            self._schedules = sum(1 for d in self.config.deployments for s in d.schedules if s.active)
        schedules = self._schedules
        return (
            f"leader, {len(self.config.deployments)} deployments, {schedules} schedules, "
            f"tick every {self.config.scheduler.loop_interval:g}s"
        )

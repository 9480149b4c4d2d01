"""The scheduler daemon: keeps deployments in sync with config, materializes runs, reaps dead leases.

The loop reads like its duties: each tick materializes the schedules whose cursor is inside the
horizon (the only ones it touches, found through an index), then reaps expired leases.  Ticks
are idempotent, so two schedulers at once, or one killed mid-tick and restarted, never create a
run twice: the unique key on (deployment, schedule key, scheduled_for) absorbs the repeat.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import OperationalError

from orchd.config import Config
from orchd.db.store import Store
from orchd.logging import get_logger
from orchd.notify import Notifier
from orchd.scheduler.plan import plan

log = get_logger("orchd.scheduler")
BATCH = 1000


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class TickReport:
    schedules: int = 0
    created: int = 0
    crashed: int = 0


class Scheduler:
    def __init__(self, config: Config, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.host = socket.gethostname()
        self.name = f"{self.host}-{os.getpid()}"
        self.started_at = clock()

    def sync(self) -> None:
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
        self.config = config
        self.sync()

    def tick(self) -> TickReport:
        now = self.clock()
        cfg = self.config.scheduler
        horizon_end = now + timedelta(seconds=cfg.horizon)
        tolerance = timedelta(seconds=2 * cfg.loop_interval + 1)
        report = TickReport()
        after: tuple[datetime, int] | None = None
        while True:
            due = self.store.due_schedules(horizon_end, BATCH, after=after)
            if not due:
                break
            plans = [
                plan(
                    s,
                    now,
                    horizon_end,
                    max_future=cfg.max_scheduled_runs,
                    catchup_limit=cfg.catchup_limit,
                    tolerance=tolerance,
                )
                for s in due
            ]
            report.schedules += len(due)
            report.created += self.store.materialize(plans, now)
            if len(due) < BATCH:
                break
            after = (due[-1].next_fire_at, due[-1].id)
        report.crashed = len(self.store.reap(now))
        self.store.scheduler_seen(self.name, self.host, os.getpid(), "leader", now, self.started_at)
        if report.created or report.crashed:
            log.info(
                "tick", runs_created=report.created, runs_crashed=report.crashed, schedules=report.schedules
            )
        return report

    def run(
        self,
        stop: threading.Event,
        reload: Callable[[], Config | None] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        """Tick every ``loop_interval`` until ``stop`` is set.  A database outage is logged and
        waited out with backoff; it never ends the loop."""
        notify = notifier or Notifier()
        self.sync()
        notify.ready(self._status())
        backoff = 0.0
        while not stop.is_set():
            notify.watchdog()
            try:
                if reload is not None and (new := reload()) is not None:
                    notify.reloading()
                    self.reload(new)
                    notify.ready(self._status())
                self.tick()
                backoff = 0.0
                notify.status(self._status())
            except OperationalError as exc:
                backoff = min(30.0, max(1.0, backoff * 2))
                reason = str(exc.orig).strip().splitlines()[-1] if str(exc.orig).strip() else "unreachable"
                log.warning("database unavailable, retrying", error=reason, retry_in=backoff)
                notify.status(f"database unavailable: {reason}; retrying in {backoff:.0f}s")
            stop.wait(backoff or self.config.scheduler.loop_interval)
        notify.stopping()

    def _status(self) -> str:
        schedules = sum(1 for d in self.config.deployments for s in d.schedules if s.active)
        return (
            f"leader, {len(self.config.deployments)} deployments, {schedules} schedules, "
            f"tick every {self.config.scheduler.loop_interval:g}s"
        )

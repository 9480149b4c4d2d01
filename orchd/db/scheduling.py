"""The scheduler's side of the queue: which schedules are due, turning fire times into runs,
and the upkeep that keeps the queue honest (reaping, misfires, silent workers, retention).

Contract
--------
* A fire time becomes at most one run, ever: runs of a schedule carry its key, and the unique
  key (deployment, schedule key, scheduled_for) absorbs a repeated tick, a scheduler killed
  between inserting runs and moving its cursor, or two schedulers at once.
* A cursor only moves in the transaction that inserts its runs, so a crash never skips a fire
  time; at worst the next tick plans it again and the unique key drops the repeat.
* Upkeep is idempotent and safe to run from several schedulers: each change is a guarded
  transition, so a run is CRASHED (or MISSED) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    TextClause,
    and_,
    bindparam,
    delete,
    func,
    null,
    or_,
    select,
    update,
)

from orchd import __version__
from orchd.db import rows as to
from orchd.db.base import Access
from orchd.db.queue import requeue_failed
from orchd.db.schema import RUNS_ACTIVE, deployments, runs, schedulers, schedules, workers
from orchd.db.transitions import insert_runs, new_run, transition
from orchd.models import DeploymentSpec, DueSchedule, Materialization, OverdueRun, Upkeep
from orchd.states import ACTIVE, FINISHED, RunState

S = RunState


class Scheduling(Access):
    def due_schedules(
        self, until: datetime, limit: int, after: tuple[datetime, int] | None = None
    ) -> list[DueSchedule]:
        """Up to ``limit`` active schedules of live, unpaused deployments whose cursor lies at or
        before ``until``, earliest cursor first: the only ones a tick touches, found through the
        cursor index, so a tick costs what is due, not what exists.  ``after`` (cursor, id of the
        last one seen) continues a previous page."""
        stmt = (
            select(
                schedules,
                deployments.c.name.label("deployment"),
                deployments.c.pool,
                deployments.c.priority,
                deployments.c.spec.label("dep_spec"),
            )
            .join(deployments, deployments.c.id == schedules.c.deployment_id)
            .where(
                schedules.c.active,
                schedules.c.archived_at.is_(None),
                schedules.c.next_fire_at <= until,
                deployments.c.archived_at.is_(None),
                deployments.c.paused.is_(False),
            )
            .order_by(schedules.c.next_fire_at, schedules.c.id)
            .limit(limit)
        )
        if after is not None:
            at, sid = after
            stmt = stmt.where(
                or_(schedules.c.next_fire_at > at, and_(schedules.c.next_fire_at == at, schedules.c.id > sid))
            )
        with self.read() as conn:
            rows = conn.execute(stmt).all()
        due = []
        for r in rows:
            dep_spec = DeploymentSpec.from_json(r.dep_spec)
            due.append(
                DueSchedule(
                    id=r.id,
                    deployment_id=r.deployment_id,
                    deployment=r.deployment,
                    spec=to.schedule_spec(r),
                    next_fire_at=r.next_fire_at,
                    pool=r.pool,
                    priority=r.priority,
                    max_attempts=dep_spec.max_attempts,
                    catchup=dep_spec.catchup,
                    parameters=dep_spec.run_parameters(r.parameters),
                )
            )
        return due

    def materialize(self, plans: Sequence[Materialization], now: datetime) -> int:
        """Insert the planned runs and move each schedule's cursor to where its plan ends, in one
        transaction; return how many runs were new.  A fire time that already has a run (a
        repeated tick, a second scheduler) is skipped by the unique key, so this is idempotent."""
        rows = [
            new_run(
                deployment_id=p.schedule.deployment_id,
                pool=p.schedule.pool,
                priority=p.schedule.priority,
                max_attempts=p.schedule.max_attempts,
                parameters=p.schedule.parameters,
                scheduled_for=t,
                due_at=t + p.schedule.spec.delay(t),
                now=now,
                schedule_id=p.schedule.id,
                schedule_key=key,
            )
            for p, key in ((p, p.schedule.spec.key) for p in plans)
            for t in p.fire_times
        ]
        with self.write() as conn:
            inserted = insert_runs(conn, rows, now=now, actor=self.actor, reason="scheduled")
            if plans:
                conn.execute(
                    update(schedules)
                    .where(schedules.c.id == bindparam("sid"))
                    .values(next_fire_at=bindparam("cursor"), updated_at=now),
                    [{"sid": p.schedule.id, "cursor": p.next_fire_at} for p in plans],
                )
        return len(inserted)

    def earliest_cursor(self) -> datetime | None:
        """The earliest materialization cursor of a live schedule (uses the cursor index): until the
        horizon reaches it, a tick has nothing to materialize."""
        with self.read() as conn:
            value: datetime | None = conn.execute(
                select(func.min(schedules.c.next_fire_at)).where(
                    schedules.c.active, schedules.c.archived_at.is_(None)
                )
            ).scalar()
        return value

    def upkeep(self, now: datetime, misfire_grace: float | None, worker_timeout: float) -> Upkeep:
        """The scheduler's periodic upkeep in one short transaction; returns the runs it CRASHED
        (some of them retried since), those it marked MISSED, and when it will next have work.

        * Runs whose lease expired (their worker died, hung, or lost the database for longer than
          the lease) become CRASHED, and are retried when attempts remain.  The lease is set at
          claim time, so a run that never got a heartbeat is judged by its claim and cannot escape.
        * With ``misfire_grace``, runs still waiting that long after their due time become MISSED.
        * Workers silent for ``worker_timeout`` are marked offline.

        At most 500 runs of each kind per call (the rest on the next call), so the transaction
        stays short however large a backlog an outage left.  Rows another transaction holds are
        skipped, for the next call: a worker cut off from the database in the middle of a
        transaction leaves its row locks behind until the server gives up on its session, and the
        upkeep (and the tick with it) must not wait for that."""
        silent_since = now - timedelta(seconds=worker_timeout)
        with self.read() as conn:  # idle, one read every few seconds, not the write lock
            lease, heard, due = conn.execute(_upkeep_next(misfire_grace is not None)).one()
        coming: list[datetime] = [lease] if lease else []
        if heard:
            coming.append(heard + timedelta(seconds=worker_timeout))
        if due and misfire_grace is not None:
            coming.append(due + timedelta(seconds=misfire_grace))
        next_due = min(coming, default=None)
        if next_due is None or next_due >= now:
            return Upkeep([], [], next_due)
        with self.write() as conn:
            crashed = self._reap(conn, now)
            missed = self._mark_missed(conn, now, misfire_grace) if misfire_grace else []
            silent = select(workers.c.name).where(_silent(silent_since)).with_for_update(skip_locked=True)
            conn.execute(update(workers).where(workers.c.name.in_(silent)).values(status="offline"))
        return Upkeep(crashed, missed, next_due)

    def _reap(self, conn: Connection, now: datetime, limit: int = 500) -> list[int]:
        crashed: list[int] = []
        expired = conn.execute(
            select(runs.c.id, runs.c.state, runs.c.worker, runs.c.lease_expires_at)
            # the states literally, so SQLite uses ix_runs_active_lease (with bound values it
            # walked the whole history: 0.7 s a tick at a million runs)
            .where(_expired(now))
            .limit(limit)
            .with_for_update(skip_locked=True)  # see upkeep
        ).all()
        for state in ACTIVE:
            ids = [r.id for r in expired if r.state == state.value]
            crashed += transition(
                conn,
                ids,
                state,
                S.CRASHED,
                now=now,
                actor=self.actor,
                reason="lease expired: its worker stopped heartbeating",
                values={
                    "finished_at": now,
                    "error": "worker lost (lease expired)",
                    "lease_expires_at": None,
                },
            )
        requeue_failed(conn, crashed, S.CRASHED, now, self.actor)
        # Their workers, silent since before the leases lapsed, are gone: shown offline now, not
        # after worker_timeout.  A live worker that only lost track of a run is online again at
        # its next heartbeat.
        lapsed: dict[str, datetime] = {}
        for r in expired:
            if r.id in crashed and r.worker:
                lapsed[r.worker] = max(lapsed.get(r.worker, r.lease_expires_at), r.lease_expires_at)
        for name, expiry in lapsed.items():
            conn.execute(
                update(workers)
                .where(
                    workers.c.name == name, workers.c.status == "online", workers.c.last_heartbeat < expiry
                )
                .values(status="offline")
            )
        return crashed

    def _mark_missed(self, conn: Connection, now: datetime, grace: float, limit: int = 500) -> list[int]:
        """Runs still waiting ``grace`` after their due time are MISSED: after an outage of the
        workers, a backlog of stale runs is recorded instead of executed all at once."""
        cutoff = now - timedelta(seconds=grace)
        stale = (
            conn.execute(
                select(runs.c.id)
                .where(_stale(cutoff))
                .limit(limit)
                .with_for_update(skip_locked=True)  # see upkeep
            )
            .scalars()
            .all()
        )
        return transition(
            conn,
            stale,
            S.SCHEDULED,
            S.MISSED,
            now=now,
            actor=self.actor,
            values={"finished_at": now},
            reason=f"not started within misfire_grace ({grace:g}s) of its due time",
        )

    def prune(self, now: datetime, retention: float, batch: int = 1000) -> int:
        """Delete up to ``batch`` finished runs that finished more than ``retention`` ago (their history
        and output go with them, by foreign key), and workers and schedulers silent that long;
        return how many runs.  One small batch per call so no lock is held for long: call again
        while it returns a full batch.  A run that has not finished is never deleted."""
        cutoff = now - timedelta(seconds=retention)
        finished = [s.value for s in FINISHED]
        with self.write() as conn:
            old = (
                conn.execute(
                    select(runs.c.id)
                    .where(runs.c.finished_at < cutoff, runs.c.state.in_(finished))
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if old:
                conn.execute(delete(runs).where(runs.c.id.in_(old)))
            conn.execute(
                delete(workers).where(workers.c.status != "online", workers.c.last_heartbeat < cutoff)
            )
            conn.execute(delete(schedulers).where(schedulers.c.last_tick_at < cutoff))
        return len(old)

    def scheduler_seen(
        self, name: str, host: str, pid: int, role: str, now: datetime, started_at: datetime
    ) -> None:
        """Record a scheduler as leader or standby at ``now`` (what `orchd status` reads)."""
        with self.write() as conn:
            stmt = self._insert(schedulers).values(
                name=name,
                host=host,
                pid=pid,
                role=role,
                version=__version__,
                started_at=started_at,
                last_tick_at=now,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[schedulers.c.name], set_={"role": role, "last_tick_at": now}
                )
            )

    def last_leader_seen(self, other_than: str) -> datetime | None:
        """When a leader other than ``other_than`` last recorded itself (it records itself every
        few seconds while it leads): the start of the time no scheduler ran, for one taking over."""
        with self.read() as conn:
            value: datetime | None = conn.execute(
                select(func.max(schedulers.c.last_tick_at)).where(
                    schedulers.c.role == "leader", schedulers.c.name != other_than
                )
            ).scalar()
        return value

    def overdue_materialized(self, since: datetime | None, before: datetime) -> list[OverdueRun]:
        """Runs schedules materialized, never claimed, whose fire time lies in ``[since, before)``,
        of live deployments without an active-run limit (their waiting runs wait for the limit,
        by design: the overlap policy governs them, not catch-up).  Only first attempts: a retry
        is the run's own business."""
        stmt = (
            select(
                runs.c.id,
                runs.c.schedule_id,
                runs.c.scheduled_for,
                deployments.c.spec.label("dep_spec"),
                schedules.c.next_fire_at,
                schedules.c.kind,
                schedules.c.expr,
                schedules.c.timezone,
                schedules.c.anchor,
                schedules.c.active,
                schedules.c.parameters,
                schedules.c.jitter,
            )
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .join(schedules, schedules.c.id == runs.c.schedule_id)
            .where(
                runs.c.state == S.SCHEDULED.value,
                runs.c.attempt == 1,
                runs.c.claimed_at.is_(None),
                runs.c.scheduled_for < before,
                deployments.c.archived_at.is_(None),
            )
            .order_by(runs.c.schedule_id, runs.c.scheduled_for)
        )
        if since is not None:
            stmt = stmt.where(runs.c.scheduled_for >= since)
        with self.read() as conn:
            rows = conn.execute(stmt).all()
        found = []
        for r in rows:
            spec = DeploymentSpec.from_json(r.dep_spec)
            if spec.active_cap is None:
                found.append(
                    OverdueRun(
                        r.id,
                        r.schedule_id,
                        r.scheduled_for,
                        spec.catchup,
                        r.next_fire_at,
                        to.schedule_spec(r),
                    )
                )
        return found

    def miss(self, run_ids: Sequence[int], now: datetime, reason: str) -> list[int]:
        """Mark waiting runs MISSED (guarded: one claimed meanwhile stays claimed); the ids moved."""
        with self.write() as conn:
            return transition(
                conn, run_ids, S.SCHEDULED, S.MISSED, now=now, actor=self.actor, reason=reason,
                values={"finished_at": now},
            )  # fmt: skip


class _Watch(NamedTuple):
    """What the upkeep acts on, stated once for its look (when it will next have work) and its
    work: the rows in ``scope`` whose ``deadline`` column has passed a bound."""

    scope: ColumnElement[bool] | TextClause
    deadline: Any

    def past(self, bound: Any) -> ColumnElement[bool]:
        return and_(self.scope, self.deadline < bound)

    def earliest(self) -> Any:
        """The earliest deadline in scope, from an index, as a scalar subquery."""
        return select(func.min(self.deadline)).where(self.scope).scalar_subquery()


#: Active runs, by when their lease expires; runs still waiting, by their due time (stale once
#: misfire_grace has passed); workers shown online, by when they were last heard from.
_LEASED = _Watch(RUNS_ACTIVE, runs.c.lease_expires_at)
_WAITING = _Watch(runs.c.state == S.SCHEDULED.value, runs.c.due_at)
_ONLINE = _Watch(workers.c.status == "online", workers.c.last_heartbeat)


def _expired(now: Any) -> ColumnElement[bool]:
    """Active runs whose lease has expired."""
    return _LEASED.past(now)


def _stale(cutoff: Any) -> ColumnElement[bool]:
    """Runs still waiting since before ``cutoff`` (misfire_grace after their due time)."""
    return _WAITING.past(cutoff)


def _silent(since: Any) -> ColumnElement[bool]:
    """Workers shown online that have not been heard from since ``since``."""
    return _ONLINE.past(since)


@lru_cache(maxsize=2)
def _upkeep_next(misfires: bool) -> Select[tuple[Any, Any, Any]]:
    """When the upkeep will next have work, in one read built once: the earliest lease of an
    active run, the oldest heartbeat of a worker shown online and (``misfires``) the earliest due
    time of a waiting run.  An idle scheduler asks every few seconds."""
    return select(_LEASED.earliest(), _ONLINE.earliest(), _WAITING.earliest() if misfires else null())

"""The data-access layer: every query orchd runs, in one place, one SQL for both databases.

Daemon loops and the CLI call these methods and hold no SQL of their own; state changes go
through ``orchd.db.transitions`` so the guarded-UPDATE rule holds everywhere.  Each method is one short
transaction (SQLite: one BEGIN IMMEDIATE; PostgreSQL: short enough not to hold back vacuum).

Contracts
---------
claim
    In one transaction pick up to ``limit`` due SCHEDULED runs of the given pools (not paused),
    highest priority first then oldest ``due_at``, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (the
    BEGIN IMMEDIATE write lock on SQLite), and move them to PENDING with the worker's name and a
    lease.  A run is therefore handed to exactly one worker.
heartbeat
    One UPDATE extends the lease of every run the worker holds; the worker learns which of its
    runs it still holds and which were asked to cancel.  A run it thinks it holds but which is
    not returned was taken away (reaped) and must be stopped.
reap
    Runs whose lease expired (their worker died or lost the database for longer than the lease)
    become CRASHED and are retried if attempts remain.  The lease is set at claim time, so a run
    that never got a heartbeat is judged by its claim time and cannot escape.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from orchd import __version__
from orchd.config import Config
from orchd.db import rows as to
from orchd.db.engine import READ_ONLY
from orchd.db.schema import deployments, pools, run_logs, run_states, runs, schedulers, schedules, workers
from orchd.db.transitions import record_created, transition
from orchd.errors import OrchdError
from orchd.models import (
    ClaimedRun,
    DeploymentSpec,
    DueSchedule,
    LogLine,
    Materialization,
    Run,
    StateChange,
    SyncReport,
)
from orchd.retries import retry_delay
from orchd.schedules import ScheduleSpec
from orchd.states import ACTIVE, FINISHED, RETRYABLE, TRANSITIONS, RunState

S = RunState
#: The read models moved to orchd.models; still importable from here for code written before.
__all__ = ["CHANNEL", "ClaimedRun", "DueSchedule", "Materialization", "Store", "SyncReport"]
#: The NOTIFY channel; the payload is the pool name.
CHANNEL = "orchd"
#: Columns cleared when a run goes back to SCHEDULED (retry, hand-back, manual retry).
_BACK_TO_QUEUE: dict[str, Any] = {
    "worker": None,
    "pid": None,
    "claimed_at": None,
    "started_at": None,
    "lease_expires_at": None,
}


_BATCH = 2000


def _chunks(ids: Sequence[int], size: int = 5000) -> Iterable[Sequence[int]]:
    """IN-lists small enough for SQLite's bound-parameter limit."""
    return (ids[i : i + size] for i in range(0, len(ids), size))


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Store:
    def __init__(self, engine: Engine, actor: str) -> None:
        self.engine = engine
        self.actor = actor
        self._dialect = sqlite if engine.dialect.name == "sqlite" else postgresql
        self._data_version = -1

    def _insert(self, table: Any) -> Any:
        """A dialect INSERT, so ON CONFLICT works the same on both databases."""
        return self._dialect.insert(table)

    def read(self) -> Any:
        """A read-only transaction (SQLite: deferred BEGIN, so readers never block writers)."""
        return self.engine.connect().execution_options(**READ_ONLY)

    # ------------------------------------------------------------------ deployments

    def sync(self, config: Config, now: datetime, only: Collection[str] | None = None) -> SyncReport:
        """Make the database match the config: create/update deployments and schedules, archive what
        left the config.  Unchanged config changes nothing (no write, no new run).  Statements are
        batched (one SELECT per table, executemany for changes), so 100,000 schedules sync quickly.

        ``only``: apply just these deployments (and their schedules), archive nothing: what a
        command applies on the side, e.g. `run create` of a deployment the config just gained."""
        report = SyncReport()
        chosen = [d for d in config.deployments if only is None or d.name in only]
        with self.engine.begin() as conn:
            self._sync_pools(conn, config, now)
            existing = {r.name: r for r in conn.execute(select(deployments))}
            ids: dict[str, int] = {}
            new, changed = [], []
            for dep in chosen:
                spec = DeploymentSpec.from_config(dep, config.scheduler.catchup).to_json()
                values = {
                    "pool": dep.pool,
                    "spec": spec,
                    "priority": dep.priority,
                    "config_hash": _hash([spec, dep.pool, dep.priority]),
                }
                row = existing.get(dep.name)
                if row is None:
                    new.append({"name": dep.name, "created_at": now, "updated_at": now, **values})
                    continue
                ids[dep.name] = row.id
                if row.config_hash != values["config_hash"] or row.archived_at is not None:
                    changed.append({"did": row.id, **values})
            if new:
                stmt = insert(deployments).returning(deployments.c.id, deployments.c.name)
                ids.update({r.name: r.id for r in conn.execute(stmt, new)})
            if changed:
                conn.execute(
                    update(deployments)
                    .where(deployments.c.id == bindparam("did"))
                    .values(archived_at=None, updated_at=now),
                    changed,
                )
            gone = [
                r.id
                for name, r in existing.items()
                if only is None and name not in ids and r.archived_at is None
            ]
            for chunk in _chunks(gone):
                conn.execute(
                    update(deployments)
                    .where(deployments.c.id.in_(chunk))
                    .values(archived_at=now, updated_at=now)
                )
            report.created, report.updated, report.archived = len(new), len(changed), len(gone)
            wanted = {ids[d.name]: d.schedules for d in chosen}
            self._sync_schedules(conn, wanted, now, report, every=only is None)
        return report

    def _sync_pools(self, conn: Connection, config: Config, now: datetime) -> None:
        declared = {p.name: p for p in config.pools}
        for pool in declared.values():
            stmt = self._insert(pools).values(
                name=pool.name,
                concurrency_limit=pool.concurrency_limit,
                paused=pool.paused,
                created_at=now,
                updated_at=now,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[pools.c.name],
                    set_={
                        "concurrency_limit": pool.concurrency_limit,
                        "paused": pool.paused,
                        "updated_at": now,
                    },
                )
            )
        implicit = {d.pool for d in config.deployments} | set(config.worker.pools)
        for name in sorted(implicit - declared.keys()):
            conn.execute(
                self._insert(pools).values(name=name, created_at=now, updated_at=now).on_conflict_do_nothing()
            )

    def _sync_schedules(
        self,
        conn: Connection,
        wanted: Mapping[int, Sequence[ScheduleSpec]],
        now: datetime,
        report: SyncReport,
        every: bool = True,
    ) -> None:
        """Schedules of every deployment (archived ones want none), or with ``every`` false of those
        in ``wanted`` only: add, re-activate, deactivate, archive — keyed by the schedule's
        definition, never by its row id."""
        current: dict[int, dict[str, Any]] = {}
        for r in conn.execute(
            select(
                schedules.c.id,
                schedules.c.deployment_id,
                schedules.c.key,
                schedules.c.active,
                schedules.c.archived_at,
            )
        ):
            current.setdefault(r.deployment_id, {})[r.key] = r
        new: list[dict[str, Any]] = []
        gone: list[int] = []
        deactivated: list[int] = []
        added = 0
        for dep_id in wanted.keys() | (current.keys() if every else set()):
            rows = current.get(dep_id, {})
            specs = wanted.get(dep_id, ())
            for spec in specs:
                row = rows.get(spec.key)
                if row is None:
                    if len(new) >= _BATCH:  # bounded memory however many schedules there are
                        conn.execute(insert(schedules), new)
                        added += len(new)
                        new = []
                    new.append(
                        {
                            "deployment_id": dep_id,
                            "key": spec.key,
                            "kind": spec.kind,
                            "expr": spec.expr,
                            "timezone": spec.timezone,
                            "anchor": spec.anchor,
                            "parameters": dict(spec.parameters),
                            "jitter": spec.jitter,
                            "active": spec.active,
                            "next_fire_at": spec.next_at_or_after(now),
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                elif row.active != spec.active or row.archived_at is not None:
                    values: dict[str, Any] = {"active": spec.active, "archived_at": None, "updated_at": now}
                    if spec.active:  # revived: no catch-up for the time it was switched off
                        values["next_fire_at"] = spec.next_at_or_after(now)
                    else:
                        deactivated.append(row.id)
                    conn.execute(update(schedules).where(schedules.c.id == row.id).values(**values))
            keys = {s.key for s in specs}
            gone += [r.id for key, r in rows.items() if key not in keys and r.archived_at is None]
        if new:
            conn.execute(insert(schedules), new)
            added += len(new)
        for chunk in _chunks(gone):
            conn.execute(
                update(schedules).where(schedules.c.id.in_(chunk)).values(archived_at=now, updated_at=now)
            )
        self._drop_unstarted(conn, deactivated, now, "schedule deactivated")
        self._drop_unstarted(conn, gone, now, "schedule removed from config")
        report.schedules_added, report.schedules_removed = added, len(gone)

    def _drop_unstarted(
        self, conn: Connection, schedule_ids: Sequence[int], now: datetime, reason: str
    ) -> None:
        """Future runs of a schedule that no longer applies are deleted (they never existed for anyone);
        runs already due but not claimed are CANCELLED so the record shows why they did not run."""
        for chunk in _chunks(schedule_ids):
            self._drop_unstarted_chunk(conn, chunk, now, reason)

    def _drop_unstarted_chunk(
        self, conn: Connection, schedule_ids: Sequence[int], now: datetime, reason: str
    ) -> None:
        of_schedules = and_(runs.c.schedule_id.in_(schedule_ids), runs.c.state == S.SCHEDULED.value)
        conn.execute(delete(runs).where(of_schedules, runs.c.scheduled_for > now))
        due = conn.execute(select(runs.c.id).where(of_schedules)).scalars().all()
        transition(
            conn,
            due,
            S.SCHEDULED,
            S.CANCELLED,
            now=now,
            actor=self.actor,
            reason=reason,
            values={"finished_at": now},
        )

    # ------------------------------------------------------------------ scheduler

    def due_schedules(
        self, until: datetime, limit: int, after: tuple[datetime, int] | None = None
    ) -> list[DueSchedule]:
        """Active schedules whose cursor lies before ``until``: the only ones a tick touches.
        ``after`` continues a previous page (keyset on cursor, id)."""
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
        """Insert the planned runs (duplicates ignored by the unique key) and advance the cursors."""
        rows = [
            {
                "deployment_id": p.schedule.deployment_id,
                "schedule_id": p.schedule.id,
                "schedule_key": p.schedule.spec.key,
                "pool": p.schedule.pool,
                "state": S.SCHEDULED.value,
                "priority": p.schedule.priority,
                "scheduled_for": t,
                "due_at": t + p.schedule.spec.delay(t),
                "attempt": 1,
                "max_attempts": p.schedule.max_attempts,
                "parameters": dict(p.schedule.parameters),
                "created_at": now,
                "updated_at": now,
            }
            for p in plans
            for t in p.fire_times
        ]
        with self.engine.begin() as conn:
            inserted: list[tuple[int, int]] = []
            if rows:
                stmt = self._insert(runs).on_conflict_do_nothing().returning(runs.c.id, runs.c.attempt)
                inserted = [(r.id, r.attempt) for r in conn.execute(stmt, rows)]
                record_created(conn, inserted, now=now, actor=self.actor, reason="scheduled")
                if inserted:
                    self._notify(conn, (p.schedule.pool for p in plans if p.fire_times))
            if plans:
                conn.execute(
                    update(schedules)
                    .where(schedules.c.id == bindparam("sid"))
                    .values(next_fire_at=bindparam("cursor"), updated_at=now),
                    [{"sid": p.schedule.id, "cursor": p.next_fire_at} for p in plans],
                )
        return len(inserted)

    def create_run(
        self,
        deployment: str,
        now: datetime,
        *,
        at: datetime | None = None,
        parameters: Mapping[str, Any] | None = None,
        reason: str = "created by hand",
    ) -> int:
        """An ad-hoc run (no schedule, so no idempotency key), due at ``at`` or now."""
        with self.engine.begin() as conn:
            dep = conn.execute(
                select(deployments).where(
                    deployments.c.name == deployment, deployments.c.archived_at.is_(None)
                )
            ).first()
            if dep is None:
                raise OrchdError(f"deployment {deployment!r} not found (see `orchd deployment ls`)")
            when = at or now
            spec = DeploymentSpec.from_json(dep.spec)
            run_id: int = conn.execute(
                runs.insert()
                .values(
                    deployment_id=dep.id,
                    pool=dep.pool,
                    state=S.SCHEDULED.value,
                    priority=dep.priority,
                    scheduled_for=when,
                    due_at=when,
                    attempt=1,
                    max_attempts=spec.max_attempts,
                    parameters=spec.run_parameters(parameters),
                    created_at=now,
                    updated_at=now,
                )
                .returning(runs.c.id)
            ).scalar_one()
            record_created(conn, [(run_id, 1)], now=now, actor=self.actor, reason=reason)
            self._notify(conn, [dep.pool])
        return run_id

    def upkeep(self, now: datetime, misfire_grace: float | None, worker_timeout: float) -> tuple[int, int]:
        """The scheduler's periodic upkeep in one short transaction: reap expired leases, mark stale
        runs MISSED, mark silent workers offline.  Returns (crashed, missed)."""
        with self.engine.begin() as conn:
            crashed = self._reap(conn, now)
            missed = self._mark_missed(conn, now, misfire_grace) if misfire_grace else []
            conn.execute(
                update(workers)
                .where(
                    workers.c.status == "online",
                    workers.c.last_heartbeat < now - timedelta(seconds=worker_timeout),
                )
                .values(status="offline")
            )
        return len(crashed), len(missed)

    def earliest_cursor(self) -> datetime | None:
        """The earliest materialization cursor of a live schedule (uses the cursor index)."""
        with self.read() as conn:
            value: datetime | None = conn.execute(
                select(func.min(schedules.c.next_fire_at)).where(
                    schedules.c.active, schedules.c.archived_at.is_(None)
                )
            ).scalar()
        return value

    def reap(self, now: datetime, limit: int = 500) -> list[int]:
        """Expired leases -> CRASHED (then retried when attempts remain).  Returns the crashed ids."""
        with self.engine.begin() as conn:
            return self._reap(conn, now, limit)

    def _reap(self, conn: Connection, now: datetime, limit: int = 500) -> list[int]:
        crashed: list[int] = []
        expired = conn.execute(
            select(runs.c.id, runs.c.state, runs.c.worker)
            .where(runs.c.state.in_([s.value for s in ACTIVE]), runs.c.lease_expires_at < now)
            .limit(limit)
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
        self._retry(conn, crashed, S.CRASHED, now)
        return crashed

    def _mark_missed(self, conn: Connection, now: datetime, grace: float, limit: int = 500) -> list[int]:
        """Runs still waiting ``grace`` after their due time are MISSED: after an outage of the
        workers, a backlog of stale runs is recorded instead of executed all at once."""
        cutoff = now - timedelta(seconds=grace)
        stale = (
            conn.execute(
                select(runs.c.id)
                .where(runs.c.state == S.SCHEDULED.value, runs.c.due_at < cutoff)
                .limit(limit)
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
        """Delete finished runs older than ``retention`` (their history and output go with them, by
        foreign key), one small batch per call so no lock is held for long."""
        cutoff = now - timedelta(seconds=retention)
        finished = [s.value for s in FINISHED]
        with self.engine.begin() as conn:
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

    def cancel_run(self, run_id: int, now: datetime) -> RunState:
        """A waiting run is CANCELLED at once; a running one goes CANCELLING and its worker kills it."""
        reason = f"cancelled by {self.actor}"
        with self.engine.begin() as conn:
            state = conn.execute(select(runs.c.state).where(runs.c.id == run_id)).scalar()
            if state is None:
                raise OrchdError(f"run {run_id} not found")
            current = RunState(state)
            target = S.CANCELLING if current == S.RUNNING else S.CANCELLED
            if target not in TRANSITIONS[current]:
                raise OrchdError(f"run {run_id} is {current}: nothing to cancel")
            values = {"finished_at": now} if target == S.CANCELLED else {}
            if not transition(
                conn, [run_id], current, target, now=now, actor=self.actor, reason=reason, values=values
            ):
                raise OrchdError(f"run {run_id} changed state meanwhile; try again")
        return target

    def retry_run(self, run_id: int, now: datetime) -> int:
        """Re-queue a finished run, due now, as its next attempt; returns that attempt number.

        A run whose attempt no worker ever claimed (cancelled or missed while it waited) is
        re-queued as the same attempt: nothing was attempted, so nothing is counted."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(runs.c.state, runs.c.attempt, runs.c.claimed_at).where(runs.c.id == run_id)
            ).first()
            if row is None:
                raise OrchdError(f"run {run_id} not found")
            current = RunState(row.state)
            if current not in FINISHED:
                raise OrchdError(f"run {run_id} is {current}: only a finished run can be retried")
            attempt = row.attempt + (row.claimed_at is not None)
            transition(
                conn,
                [run_id],
                current,
                S.SCHEDULED,
                now=now,
                actor=self.actor,
                reason=f"retried by {self.actor}",
                values={
                    **_BACK_TO_QUEUE,
                    "due_at": now,
                    "attempt": attempt,
                    "max_attempts": case(
                        (runs.c.max_attempts >= attempt, runs.c.max_attempts), else_=attempt
                    ),
                    "finished_at": None,
                    "exit_code": None,
                    "error": None,
                    "result": None,
                },
            )
        return int(attempt)

    def cancel_requested(self, worker: str) -> list[int]:
        """Runs of ``worker`` a user asked to cancel (CANCELLING)."""
        with self.read() as conn:
            return list(
                conn.execute(
                    select(runs.c.id).where(runs.c.worker == worker, runs.c.state == S.CANCELLING.value)
                ).scalars()
            )

    def _retry(self, conn: Connection, run_ids: Sequence[int], state: RunState, now: datetime) -> list[int]:
        """Send runs that ended in ``state`` back to SCHEDULED (attempt + 1) when attempts remain."""
        if not run_ids or state not in RETRYABLE:
            return []
        rows = conn.execute(
            select(runs.c.id, runs.c.attempt, runs.c.max_attempts, deployments.c.spec)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(runs.c.id.in_(list(run_ids)), runs.c.attempt < runs.c.max_attempts)
        ).all()
        retried = []
        for r in rows:
            spec = DeploymentSpec.from_json(r.spec)
            delay = retry_delay(spec.retry_delay, spec.retry_backoff, r.attempt)
            retried += transition(
                conn,
                [r.id],
                state,
                S.SCHEDULED,
                now=now,
                actor=self.actor,
                reason=f"retry {r.attempt + 1}/{r.max_attempts} in {delay:.1f}s",
                values={
                    **_BACK_TO_QUEUE,
                    "attempt": runs.c.attempt + 1,
                    "due_at": now + timedelta(seconds=delay),
                    "finished_at": None,
                    "exit_code": None,
                },
            )
        return retried

    def scheduler_seen(
        self, name: str, host: str, pid: int, role: str, now: datetime, started_at: datetime
    ) -> None:
        with self.engine.begin() as conn:
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

    # ------------------------------------------------------------------ worker

    def register_worker(
        self, name: str, host: str, pid: int, pool_names: Sequence[str], concurrency: int, now: datetime
    ) -> None:
        values = {
            "host": host,
            "pid": pid,
            "pools": list(pool_names),
            "concurrency": concurrency,
            "running": 0,
            "version": __version__,
            "status": "online",
            "started_at": now,
            "last_heartbeat": now,
        }
        with self.engine.begin() as conn:
            conn.execute(
                self._insert(pools)
                .values([{"name": p, "created_at": now, "updated_at": now} for p in pool_names])
                .on_conflict_do_nothing()
            )
            stmt = self._insert(workers).values(name=name, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=[workers.c.name], set_=values))

    def worker_stopped(self, name: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.name == name)
                .values(status="stopped", running=0, last_heartbeat=now)
            )

    def heartbeat(
        self, worker: str, now: datetime, lease_until: datetime, run_ids: Sequence[int]
    ) -> dict[int, RunState]:
        """Extend, in one statement, the leases of the runs ``worker`` is executing (``run_ids``:
        what it has in memory, not every row carrying its name, so a run it lost track of, or one
        a dead predecessor of the same name held, expires and is reaped); return those still its."""
        with self.engine.begin() as conn:
            held: list[Row[Any]] = []
            for chunk in _chunks(run_ids):
                held += conn.execute(
                    update(runs)
                    .where(
                        runs.c.id.in_(chunk),
                        runs.c.worker == worker,
                        runs.c.state.in_([s.value for s in ACTIVE]),
                    )
                    .values(lease_expires_at=lease_until)
                    .returning(runs.c.id, runs.c.state)
                ).all()
            conn.execute(
                update(workers)
                .where(workers.c.name == worker)
                .values(last_heartbeat=now, running=len(run_ids), status="online")
            )
        return {r.id: RunState(r.state) for r in held}

    def claim(
        self, worker: str, pool_names: Sequence[str], limit: int, now: datetime, lease_until: datetime
    ) -> list[ClaimedRun]:
        """See the module docstring.  Limits hold across workers and hosts: the rows of limited pools
        and deployments are locked (PostgreSQL) for the few milliseconds of the claim, so two
        claimers cannot both see the last free slot."""
        if limit <= 0:
            return []
        with self.engine.begin() as conn:
            # One statement picks the candidates with everything needed to run them; paused pools
            # are left out by the join, and limited pools show their limit.
            candidates = conn.execute(
                select(
                    runs.c.id,
                    runs.c.deployment_id,
                    runs.c.pool,
                    runs.c.attempt,
                    runs.c.max_attempts,
                    runs.c.scheduled_for,
                    runs.c.parameters,
                    deployments.c.name.label("deployment"),
                    deployments.c.spec,
                    pools.c.concurrency_limit,
                )
                .join(deployments, deployments.c.id == runs.c.deployment_id)
                .outerjoin(pools, pools.c.name == runs.c.pool)
                .where(
                    runs.c.state == S.SCHEDULED.value,
                    runs.c.pool.in_(list(pool_names)),
                    runs.c.due_at <= now,
                    or_(pools.c.paused.is_(None), pools.c.paused.is_(False)),
                )
                .order_by(runs.c.priority.desc(), runs.c.due_at)
                .limit(max(limit * 4, 50))
                .with_for_update(skip_locked=True, of=runs)
            ).all()
            if not candidates:
                return []
            pool_caps = {c.pool: c.concurrency_limit for c in candidates if c.concurrency_limit}
            if pool_caps:  # only limited pools serialise their claimers, on their row: re-read it locked
                locked = conn.execute(
                    select(pools.c.name, pools.c.concurrency_limit)
                    .where(pools.c.name.in_(list(pool_caps)))
                    .order_by(pools.c.name)
                    .with_for_update()
                ).all()
                pool_caps = {r.name: r.concurrency_limit for r in locked if r.concurrency_limit}
            specs = {c.deployment_id: DeploymentSpec.from_json(c.spec) for c in candidates}
            dep_caps = {d: cap for d, spec in specs.items() if (cap := spec.active_cap)}
            if dep_caps:
                conn.execute(
                    select(deployments.c.id)
                    .where(deployments.c.id.in_(list(dep_caps)))
                    .order_by(deployments.c.id)
                    .with_for_update()
                ).all()
            pool_active = self._active_counts(conn, runs.c.pool, list(pool_caps))
            dep_active = self._active_counts(conn, runs.c.deployment_id, list(dep_caps))
            take: list[int] = []
            skip: list[int] = []
            supersede: set[int] = set()
            for c in candidates:
                if len(take) >= limit:
                    break
                if c.pool in pool_caps and pool_active[c.pool] >= pool_caps[c.pool]:
                    continue
                if c.deployment_id in dep_caps and dep_active[c.deployment_id] >= dep_caps[c.deployment_id]:
                    overlap = specs[c.deployment_id].overlap
                    if overlap == "skip":
                        skip.append(c.id)
                    elif overlap == "cancel_previous":
                        supersede.add(c.deployment_id)
                    continue
                take.append(c.id)
                pool_active[c.pool] += 1
                dep_active[c.deployment_id] += 1
            transition(
                conn,
                skip,
                S.SCHEDULED,
                S.MISSED,
                now=now,
                actor=worker,
                values={"finished_at": now},
                reason="skipped: the deployment's max_active_runs are still active (overlap = skip)",
            )
            self._supersede(conn, supersede, worker, now)
            moved = transition(
                conn,
                take,
                S.SCHEDULED,
                S.PENDING,
                now=now,
                actor=worker,
                reason="claimed",
                values={"worker": worker, "claimed_at": now, "lease_expires_at": lease_until},
            )
        ours = set(moved)
        return [
            ClaimedRun(
                c.id,
                c.deployment,
                c.attempt,
                c.max_attempts,
                c.scheduled_for,
                c.parameters,
                specs[c.deployment_id],
            )
            for c in candidates
            if c.id in ours
        ]

    @staticmethod
    def _active_counts(conn: Connection, column: Any, keys: Sequence[Any]) -> Counter[Any]:
        counts: Counter[Any] = Counter()
        if keys:
            counts.update(
                dict(
                    conn.execute(
                        select(column, func.count())
                        .where(column.in_(list(keys)), runs.c.state.in_([s.value for s in ACTIVE]))
                        .group_by(column)
                    ).all()
                )
            )
        return counts

    def _supersede(self, conn: Connection, deployment_ids: Iterable[int], actor: str, now: datetime) -> None:
        """overlap = cancel_previous: the active runs of these deployments are cancelled so the due one
        can start (it waits in the queue until they are gone)."""
        ids = list(deployment_ids)
        if not ids:
            return
        reason = "superseded by a newer run (overlap = cancel_previous)"
        active = conn.execute(
            select(runs.c.id, runs.c.state).where(
                runs.c.deployment_id.in_(ids), runs.c.state.in_([S.PENDING.value, S.RUNNING.value])
            )
        ).all()
        for state, target in ((S.RUNNING, S.CANCELLING), (S.PENDING, S.CANCELLED)):
            transition(
                conn,
                [r.id for r in active if r.state == state],
                state,
                target,
                now=now,
                actor=actor,
                reason=reason,
            )

    def start(self, run_id: int, worker: str, pid: int, now: datetime) -> bool:
        return bool(self.start_many({run_id: pid}, worker, now))

    def start_many(self, pids: Mapping[int, int], worker: str, now: datetime) -> list[int]:
        """PENDING -> RUNNING for runs whose processes were just spawned (run id -> pid), in one
        transaction; returns those still ours (a run cancelled or reaped meanwhile is not)."""
        if not pids:
            return []
        with self.engine.begin() as conn:
            return transition(
                conn,
                list(pids),
                S.PENDING,
                S.RUNNING,
                now=now,
                actor=worker,
                values={"started_at": now, "pid": case(dict(pids), value=runs.c.id)},
            )

    def complete_many(self, run_ids: Sequence[int], worker: str, now: datetime) -> list[int]:
        """RUNNING -> COMPLETED (exit code 0, no result) for several runs in one transaction: the
        common case, batched so a busy worker spends its time running runs, not recording them."""
        if not run_ids:
            return []
        with self.engine.begin() as conn:
            return transition(
                conn,
                run_ids,
                S.RUNNING,
                S.COMPLETED,
                now=now,
                actor=worker,
                values={"finished_at": now, "exit_code": 0, "lease_expires_at": None},
            )

    def finish(
        self,
        run_id: int,
        worker: str,
        outcome: RunState,
        now: datetime,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        result: object = None,
        source: RunState = S.RUNNING,
    ) -> RunState | None:
        """Record a run's outcome; returns the state it ends in (SCHEDULED when it will be retried),
        or None when the run was no longer ours (reaped or cancelled meanwhile)."""
        with self.engine.begin() as conn:
            moved = transition(
                conn,
                [run_id],
                source,
                outcome,
                now=now,
                actor=worker,
                reason=error,
                values={
                    "finished_at": now,
                    "exit_code": exit_code,
                    "error": error,
                    "result": result,
                    "lease_expires_at": None,
                },
            )
            if not moved:
                return None
            return S.SCHEDULED if self._retry(conn, moved, outcome, now) else outcome

    def release(self, run_ids: Sequence[int], worker: str, now: datetime, reason: str) -> list[int]:
        """Hand runs back to the queue without charging an attempt (a stopping worker)."""
        back = {**_BACK_TO_QUEUE, "due_at": now}
        with self.engine.begin() as conn:
            return [
                rid
                for state in (S.PENDING, S.RUNNING)
                for rid in transition(
                    conn, run_ids, state, S.SCHEDULED, now=now, actor=worker, reason=reason, values=back
                )
            ]

    def append_logs(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            with self.engine.begin() as conn:
                conn.execute(run_logs.insert(), list(rows))

    def changed(self) -> bool:
        """SQLite: has another connection (the scheduler, the CLI, another worker) committed since we
        last asked?  PRAGMA data_version answers from shared memory, so polling it costs no I/O.
        PostgreSQL workers are woken by NOTIFY instead: always False."""
        if self.engine.dialect.name != "sqlite":
            return False
        with self.engine.connect() as conn:
            version = int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())
        changed, self._data_version = version != self._data_version, version
        return changed

    def _notify(self, conn: Connection, pool_names: Iterable[str]) -> None:
        """PostgreSQL: wake the workers of these pools (delivered when the transaction commits)."""
        if self.engine.dialect.name == "postgresql":
            for pool in sorted(set(pool_names)):
                conn.execute(text("SELECT pg_notify(:channel, :pool)"), {"channel": CHANNEL, "pool": pool})

    def next_due_at(self, pool_names: Sequence[str]) -> datetime | None:
        with self.read() as conn:
            value: datetime | None = conn.execute(
                select(func.min(runs.c.due_at)).where(
                    runs.c.state == S.SCHEDULED.value, runs.c.pool.in_(list(pool_names))
                )
            ).scalar()
        return value

    # ------------------------------------------------------------------ reading

    def list_runs(
        self,
        *,
        deployment: str | None = None,
        states: Iterable[str] = (),
        pool: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        now: datetime | None = None,
        upcoming: bool = False,
    ) -> list[Run]:
        """Runs, newest scheduled first; with ``now``: those due or done by then (a waiting run
        whose due time has come, and every run that was ever claimed), most recently due first,
        or with ``upcoming`` those still planned after it, soonest first."""
        stmt = select(*to.RUN_COLUMNS).join(deployments, deployments.c.id == runs.c.deployment_id)
        if deployment:
            stmt = stmt.where(deployments.c.name == deployment)
        if states := list(states):
            stmt = stmt.where(runs.c.state.in_(states))
        if pool:
            stmt = stmt.where(runs.c.pool == pool)
        if since:
            stmt = stmt.where(runs.c.scheduled_for >= since)
        if now is None:
            stmt = stmt.order_by(runs.c.scheduled_for.desc(), runs.c.id.desc())
        else:
            planned = and_(runs.c.state == S.SCHEDULED.value, runs.c.due_at > now)
            if upcoming:
                stmt = stmt.where(planned).order_by(runs.c.due_at, runs.c.id)
            else:
                stmt = stmt.where(not_(planned)).order_by(runs.c.due_at.desc(), runs.c.id.desc())
        stmt = stmt.limit(limit)
        with self.read() as conn:
            return [to.run(r) for r in conn.execute(stmt)]

    def get_run(self, run_id: int) -> Run | None:
        stmt = (
            select(*to.RUN_COLUMNS)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(runs.c.id == run_id)
        )
        with self.read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else to.run(row)

    def run_history(self, run_id: int) -> list[StateChange]:
        with self.read() as conn:
            return [
                to.state_change(r)
                for r in conn.execute(
                    select(run_states).where(run_states.c.run_id == run_id).order_by(run_states.c.id)
                )
            ]

    def run_logs(self, run_id: int, after_id: int = 0, limit: int = 10_000) -> list[LogLine]:
        with self.read() as conn:
            return [
                to.log_line(r)
                for r in conn.execute(
                    select(run_logs)
                    .where(run_logs.c.run_id == run_id, run_logs.c.id > after_id)
                    .order_by(run_logs.c.id)
                    .limit(limit)
                )
            ]

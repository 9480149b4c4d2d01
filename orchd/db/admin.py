"""The operator's queries: what the CLI, ``orchd status`` and the metrics ask beyond the daemons' own.

``store.py`` owns what the daemons do to the queue; this module owns what a person does to it
(pause a deployment, limit a pool, backfill a range, wipe the database) and the reports they
read (deployments, pools, workers, health).  Every report query is served by an index of the
schema (``ix_runs_due``, ``ix_runs_active_lease``, ``ix_runs_finished_at``) or reads a small
table, so `orchd status` and a metrics scrape stay cheap however long the run history grows.
State changes go through ``orchd.db.transitions``; the only rows deleted are future runs that nobody has
seen yet, as when the scheduler drops the runs of an edited schedule.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, Table, and_, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from orchd.db import migrate
from orchd.db import rows as to
from orchd.db.schema import (
    RUNS_ACTIVE,
    deployments,
    metadata,
    pools,
    runs,
    schedulers,
    schedules,
    workers,
)
from orchd.db.store import Store
from orchd.db.transitions import record_created
from orchd.errors import OrchdError
from orchd.models import (
    Deployment,
    DeploymentReport,
    Health,
    LastRun,
    Pool,
    PoolReport,
    Schedule,
    Worker,
)
from orchd.states import FINISHED, RETRYABLE, RunState

S = RunState
#: States a run waits or works in: counted live (the finished ones only grow, and have counters).
LIVE: tuple[str, ...] = (S.SCHEDULED.value, S.PENDING.value, S.RUNNING.value, S.CANCELLING.value)


class NotFound(OrchdError):
    """A deployment, pool or run named on the command line does not exist."""


class Admin:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine: Engine = store.engine
        self._insert = (sqlite if self.engine.dialect.name == "sqlite" else postgresql).insert

    # ------------------------------------------------------------------ deployments

    def deployments(self, include_archived: bool = False) -> list[DeploymentReport]:
        """Each deployment with its number of active schedules, its next run and its last finished run."""
        stmt = select(deployments).order_by(deployments.c.name)
        if not include_archived:
            stmt = stmt.where(deployments.c.archived_at.is_(None))
        n_schedules = (
            select(schedules.c.deployment_id, func.count().label("n"))
            .where(schedules.c.active, schedules.c.archived_at.is_(None))
            .group_by(schedules.c.deployment_id)
        )
        next_due = (
            select(runs.c.deployment_id, func.min(runs.c.due_at).label("at"))
            .where(runs.c.state == S.SCHEDULED.value)
            .group_by(runs.c.deployment_id)
        )
        latest = (
            select(
                runs.c.deployment_id,
                runs.c.id,
                runs.c.state,
                runs.c.finished_at,
                func.row_number()
                .over(
                    partition_by=runs.c.deployment_id, order_by=(runs.c.finished_at.desc(), runs.c.id.desc())
                )
                .label("rank"),
            )
            .where(runs.c.finished_at.is_not(None), runs.c.state.in_([s.value for s in FINISHED]))
            .subquery()
        )
        with self.store.read() as conn:
            rows = conn.execute(stmt).all()
            counts = {r.deployment_id: int(r.n) for r in conn.execute(n_schedules)}
            nexts = {r.deployment_id: r.at for r in conn.execute(next_due)}
            lasts = {
                r.deployment_id: LastRun(r.id, RunState(r.state), r.finished_at)
                for r in conn.execute(
                    select(latest.c.deployment_id, latest.c.id, latest.c.state, latest.c.finished_at).where(
                        latest.c.rank == 1
                    )
                )
            }
        return [
            DeploymentReport(to.deployment(row), counts.get(row.id, 0), nexts.get(row.id), lasts.get(row.id))
            for row in rows
        ]

    def deployment(self, name: str) -> Deployment:
        return to.deployment(self._named(deployments, "deployment", name))

    def schedules_of(self, deployment_id: int, include_archived: bool = False) -> list[Schedule]:
        stmt = select(schedules).where(schedules.c.deployment_id == deployment_id).order_by(schedules.c.id)
        if not include_archived:
            stmt = stmt.where(schedules.c.archived_at.is_(None))
        with self.store.read() as conn:
            return [to.schedule(r) for r in conn.execute(stmt)]

    def set_deployment_paused(self, name: str, paused: bool, now: datetime) -> tuple[bool, int]:
        """Pause or resume; returns (changed, future runs dropped).

        A paused deployment is not materialized (the scheduler skips it), and the runs it had
        already materialized ahead of time are dropped with their schedule cursors moved back to
        the first of them, so nothing it planned starts while it is paused.  On resume the
        scheduler continues from those cursors: the fire times of the pause count as missed and
        the deployment's catch-up policy decides about them, as after any downtime.
        """
        row = self.deployment(name)
        if row.archived_at is not None:
            raise OrchdError(f"deployment {name!r} is archived: it was removed from the config")
        with self.engine.begin() as conn:
            flipped = conn.execute(
                update(deployments)
                .where(deployments.c.id == row.id, deployments.c.paused.is_(not paused))
                .values(paused=paused, updated_at=now)
            ).rowcount
            if not flipped:
                return False, 0
            if not paused:
                return True, 0
            planned = and_(
                runs.c.deployment_id == row.id,
                runs.c.schedule_id.is_not(None),
                runs.c.state == S.SCHEDULED.value,
                runs.c.scheduled_for > now,
            )
            firsts = conn.execute(
                select(runs.c.schedule_id, func.min(runs.c.scheduled_for))
                .where(planned)
                .group_by(runs.c.schedule_id)
            ).all()
            dropped = conn.execute(delete(runs).where(planned)).rowcount
            for schedule_id, first in firsts:
                conn.execute(
                    update(schedules)
                    .where(schedules.c.id == schedule_id)
                    .values(next_fire_at=first, updated_at=now)
                )
        return True, int(dropped)

    # ------------------------------------------------------------------ backfill

    def active_schedules(self, deployment_id: int) -> list[Schedule]:
        """A deployment's active schedules as the database knows them: with the keys its runs carry,
        so backfilled and scheduled runs share one unique key."""
        return [s for s in self.schedules_of(deployment_id) if s.spec.active]

    def backfill(self, dep: Deployment, schedule: Schedule, times: Sequence[datetime], now: datetime) -> int:
        """Insert runs for ``times`` of ``schedule`` in one short transaction; times that already
        have a run (scheduled, or an earlier backfill) are skipped by the unique key.  The runs are
        due now, in fire-time order, so the misfire grace does not turn them MISSED at once."""
        if not times:
            return 0
        spec = dep.spec
        rows = [
            {
                "deployment_id": dep.id,
                "schedule_id": schedule.id,
                "schedule_key": schedule.spec.key,
                "pool": dep.pool,
                "state": S.SCHEDULED.value,
                "priority": dep.priority,
                "scheduled_for": at,
                "due_at": now + timedelta(microseconds=position),
                "max_attempts": spec.max_attempts,
                "parameters": spec.run_parameters(schedule.spec.parameters),
                "created_at": now,
                "updated_at": now,
            }
            for position, at in enumerate(times)
        ]
        stmt = self._insert(runs).on_conflict_do_nothing().returning(runs.c.id, runs.c.attempt)
        with self.engine.begin() as conn:
            created = [(r.id, r.attempt) for r in conn.execute(stmt, rows)]
            record_created(conn, created, now=now, actor=self.store.actor, reason="backfill")
        return len(created)

    # ------------------------------------------------------------------ pools and workers

    def create_pool(self, name: str, limit: int | None, paused: bool, now: datetime) -> None:
        stmt = self._insert(pools).values(
            name=name, concurrency_limit=limit, paused=paused, created_at=now, updated_at=now
        )
        with self.engine.begin() as conn:
            if conn.execute(stmt.on_conflict_do_nothing().returning(pools.c.name)).first() is None:
                raise OrchdError(f"pool {name!r} already exists (see `orchd pool ls`)")

    def update_pool(self, name: str, now: datetime, **values: Any) -> None:
        """Set ``paused`` and/or ``concurrency_limit`` of an existing pool."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(pools).where(pools.c.name == name).values(updated_at=now, **values)
            ).rowcount
        if not changed:
            self.pool(name)  # raises NotFound, with a suggestion

    def workers(self) -> list[Worker]:
        with self.store.read() as conn:
            return [to.worker(r) for r in conn.execute(select(workers).order_by(workers.c.name))]

    def pool_names(self) -> list[str]:
        with self.store.read() as conn:
            return list(conn.execute(select(pools.c.name).order_by(pools.c.name)).scalars())

    def pool(self, name: str) -> Pool:
        return to.pool(self._named(pools, "pool", name))

    def pools(self, now: datetime, worker_timeout: float) -> list[PoolReport]:
        with self.store.read() as conn:
            return self._pools(conn, now, worker_timeout)

    def _pools(self, conn: Any, now: datetime, worker_timeout: float) -> list[PoolReport]:
        due = self._queue(conn, now)
        upcoming = dict(
            conn.execute(
                select(runs.c.pool, func.count())
                .where(runs.c.state == S.SCHEDULED.value, runs.c.due_at > now)
                .group_by(runs.c.pool)
            ).all()
        )
        active = dict(
            conn.execute(select(runs.c.pool, func.count()).where(RUNS_ACTIVE).group_by(runs.c.pool)).all()
        )
        used_by = dict(
            conn.execute(
                select(deployments.c.pool, func.count())
                .where(deployments.c.archived_at.is_(None), deployments.c.paused.is_(False))
                .group_by(deployments.c.pool)
            ).all()
        )
        online: Counter[str] = Counter()
        slots: Counter[str] = Counter()
        for w in self._online_workers(conn, now, worker_timeout):
            for pool in w.pools:
                online[pool] += 1
                slots[pool] += w.concurrency
        return [
            PoolReport(
                name=p.name,
                concurrency_limit=p.concurrency_limit,
                paused=p.paused,
                due=due.get(p.name, (0, None))[0],
                upcoming=upcoming.get(p.name, 0),
                oldest_due=due.get(p.name, (0, None))[1],
                active=active.get(p.name, 0),
                workers=online[p.name],
                slots=slots[p.name],
                deployments=used_by.get(p.name, 0),
            )
            for p in conn.execute(select(pools).order_by(pools.c.name))
        ]

    def queue(self, now: datetime) -> dict[str, tuple[int, datetime]]:
        """Per pool: how many runs are due and not claimed, and the due time of the oldest."""
        with self.store.read() as conn:
            return self._queue(conn, now)

    @staticmethod
    def _queue(conn: Any, now: datetime) -> dict[str, tuple[int, datetime]]:
        return {
            r.pool: (int(r.n), r.oldest)
            for r in conn.execute(
                select(runs.c.pool, func.count().label("n"), func.min(runs.c.due_at).label("oldest"))
                .where(runs.c.state == S.SCHEDULED.value, runs.c.due_at <= now)
                .group_by(runs.c.pool)
            )
        }

    @staticmethod
    def _online_workers(conn: Any, now: datetime, worker_timeout: float) -> list[Row[Any]]:
        """Workers that say they are online and have heartbeated recently (the scheduler marks the
        silent ones offline, but it may be the one that is down)."""
        return list(
            conn.execute(
                select(workers).where(
                    workers.c.status == "online",
                    workers.c.last_heartbeat >= now - timedelta(seconds=worker_timeout),
                )
            ).all()
        )

    # ------------------------------------------------------------------ health

    def health(self, now: datetime, *, worker_timeout: float, late_after: float, window: float) -> Health:
        """What `orchd status` shows: leader, pools with their workers and queues, late runs (due
        longer than ``late_after`` ago), runs stuck past their lease, failures within ``window``."""
        with self.store.read() as conn:
            leader = conn.execute(
                select(schedulers)
                .where(schedulers.c.role == "leader")
                .order_by(schedulers.c.last_tick_at.desc())
                .limit(1)
            ).first()
            standbys = conn.execute(
                select(func.count()).where(
                    schedulers.c.role == "standby",
                    schedulers.c.last_tick_at >= now - timedelta(seconds=worker_timeout),
                )
            ).scalar_one()
            late = conn.execute(
                select(runs.c.id)
                .where(runs.c.state == S.SCHEDULED.value, runs.c.due_at < now - timedelta(seconds=late_after))
                .order_by(runs.c.due_at)
                .limit(100)
            ).scalars()
            stuck = conn.execute(
                select(runs.c.id)
                .where(RUNS_ACTIVE, runs.c.lease_expires_at < now)
                # by lease, which ix_runs_active_lease serves: ordered by id, SQLite walked the
                # whole table when nothing was stuck
                .order_by(runs.c.lease_expires_at, runs.c.id)
                .limit(100)
            ).scalars()
            failures = conn.execute(
                select(func.count()).where(
                    runs.c.finished_at >= now - timedelta(seconds=window),
                    runs.c.state.in_([s.value for s in RETRYABLE]),
                )
            ).scalar_one()
            return Health(
                now=now,
                leader=None if leader is None else to.scheduler_seen(leader),
                standbys=int(standbys),
                pools=self._pools(conn, now, worker_timeout),
                workers_online=len(self._online_workers(conn, now, worker_timeout)),
                late=list(late),
                stuck=list(stuck),
                failures=int(failures),
            )

    def live_runs(self) -> dict[tuple[str, str], int]:
        """Runs waiting or working, by (state, pool): the partial indexes of the queue serve it."""
        with self.store.read() as conn:
            return {
                (r.state, r.pool): int(r.n)
                for r in conn.execute(
                    select(runs.c.state, runs.c.pool, func.count().label("n"))
                    .where(runs.c.state.in_(LIVE))
                    .group_by(runs.c.state, runs.c.pool)
                )
            }

    # ------------------------------------------------------------------ naming

    def _named(self, table: Table, kind: str, name: str) -> Row[Any]:
        """The row of ``table`` called ``name``, or NotFound suggesting the closest existing name."""
        with self.store.read() as conn:
            row: Row[Any] | None = conn.execute(select(table).where(table.c.name == name)).first()
            if row is None:
                names = conn.execute(select(table.c.name)).scalars().all()
                raise NotFound(self._unknown(kind, name, names))
        return row

    @staticmethod
    def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (see `orchd {kind} ls`)"
        return f"{kind} {name!r} not found{hint}"


def wipe(engine: Engine) -> None:
    """Drop every orchd table (and Alembic's bookkeeping), then re-create the schema by migrating."""
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    migrate.upgrade(engine)

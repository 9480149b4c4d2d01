"""What people and monitoring read: runs with their history and output, deployments, pools,
workers, the queue and the health report, as read models (``orchd.models``).

Every report is read in one read-only transaction that sees one snapshot of the database
(``Access.read``), so its numbers agree with each other, and is served by an index of the schema
(``ix_runs_due``, ``ix_runs_active_lease``, ``ix_runs_finished_at``) or reads a small table, so
`orchd status`, the web pages and a metrics scrape stay cheap however long the run history grows.
A report may be stale the moment it is returned: acting on what it shows goes through a guarded
call that checks again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, Table, and_, func, not_, or_, select, true, union_all

from orchd.db import rows as to
from orchd.db.base import Access, chunks
from orchd.db.schema import (
    RUNS_ACTIVE,
    deployments,
    pools,
    run_logs,
    run_states,
    runs,
    schedulers,
    schedules,
    triggers,
    workers,
)
from orchd.errors import NotFound, did_you_mean
from orchd.models import (
    Deployment,
    DeploymentReport,
    Health,
    HeldRun,
    LastRun,
    LogLine,
    Pool,
    PoolReport,
    Run,
    RunChain,
    RunFilter,
    RunOutcome,
    RunPage,
    Schedule,
    StateChange,
    Strip,
    TriggerEdge,
    Worker,
)
from orchd.states import FINISHED, LIVE, RETRYABLE, RunState

S = RunState
RUN_OUTCOME = (runs.c.id, runs.c.state, runs.c.scheduled_for, runs.c.started_at, runs.c.finished_at)


class Reports(Access):
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
        """Up to ``limit`` runs filtered by deployment name, states, pool and scheduled time:
        newest scheduled first; with ``now``, those due or done by then (a waiting run whose due
        time has come, and every run that was ever claimed), most recently due first, or with
        ``upcoming`` those still planned after it, soonest first."""
        stmt = _selected(RunFilter(tuple(states), deployment, pool, since))
        if now is None:
            stmt = stmt.order_by(runs.c.scheduled_for.desc(), runs.c.id.desc())
        elif upcoming:
            stmt = stmt.where(_planned(now)).order_by(runs.c.due_at, runs.c.id)
        else:
            stmt = stmt.where(not_(_planned(now))).order_by(runs.c.due_at.desc(), runs.c.id.desc())
        with self.read() as conn:
            return [to.run(r) for r in conn.execute(stmt.limit(limit))]

    def runs_page(
        self, where: RunFilter, now: datetime, *, after: tuple[datetime, int] | None, limit: int
    ) -> RunPage:
        """A page of the runs due or done by ``now``, newest scheduled first, keyset-paginated on
        (scheduled_for, id) by ``ix_runs_scheduled`` (by state ``ix_runs_state_scheduled``, per
        deployment ``ix_runs_deployment_scheduled`` and ``ix_runs_deployment_state``): the
        thousandth page costs what the first does, and so does a page of a state that is rare.
        ``after`` is the previous page's ``next``.

        Several states are read as one page of each, merged: filtered by ``state IN (...)`` the
        planners (SQLite has no statistics of a column's values) walk the whole history newest
        first looking for runs of states that may not exist."""
        newest = (runs.c.scheduled_for.desc(), runs.c.id.desc())

        def part(states: tuple[str, ...]) -> Select[Any]:
            stmt = _selected(replace(where, states=states)).where(not_(_planned(now)))
            if after is not None:
                at, run_id = after
                stmt = stmt.where(
                    or_(runs.c.scheduled_for < at, and_(runs.c.scheduled_for == at, runs.c.id < run_id))
                )
            return stmt.order_by(*newest)

        states = tuple(dict.fromkeys(where.states))  # a state asked for twice is one part
        if len(states) < 2:
            return self._page(part(states), limit, "scheduled_for")
        pages = [select(part((state,)).limit(limit + 1).subquery()) for state in states]
        merged = union_all(*pages).subquery()
        stmt = select(merged).order_by(merged.c.scheduled_for.desc(), merged.c.id.desc())
        return self._page(stmt, limit, "scheduled_for")

    def upcoming_page(
        self, where: RunFilter, now: datetime, *, after: tuple[datetime, int] | None, limit: int
    ) -> RunPage:
        """A page of the runs still waiting for their time after ``now``, soonest first (the
        partial index ``ix_runs_due`` holds only waiting runs)."""
        stmt = _selected(where).where(_planned(now))
        if after is not None:
            at, run_id = after
            stmt = stmt.where(or_(runs.c.due_at > at, and_(runs.c.due_at == at, runs.c.id > run_id)))
        return self._page(stmt.order_by(runs.c.due_at, runs.c.id), limit, "due_at")

    def _page(self, stmt: Any, limit: int, key: str) -> RunPage:
        with self.read() as conn:
            found = [to.run(r) for r in conn.execute(stmt.limit(limit + 1))]
        if len(found) <= limit:
            return RunPage(found, None)
        last = found[limit - 1]
        return RunPage(found[:limit], (getattr(last, key), last.id))

    def get_run(self, run_id: int) -> Run | None:
        """The run, or None (never existed, or pruned by retention)."""
        stmt = (
            select(*to.RUN_COLUMNS)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(runs.c.id == run_id)
        )
        with self.read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else to.run(row)

    def triggers_of(self, deployment_id: int) -> list[TriggerEdge]:
        """The triggers a deployment is part of, as downstream (what it runs after) or upstream
        (what its runs start), by name, each with its states in the state machine's order."""
        upstream, downstream = deployments.alias("upstream"), deployments.alias("downstream")
        stmt = (
            select(upstream.c.name.label("up"), downstream.c.name.label("down"), triggers.c.state)
            .join(upstream, upstream.c.id == triggers.c.upstream_id)
            .join(downstream, downstream.c.id == triggers.c.downstream_id)
            .where(or_(triggers.c.upstream_id == deployment_id, triggers.c.downstream_id == deployment_id))
        )
        edges: dict[tuple[str, str], list[RunState]] = {}
        with self.read() as conn:
            for r in conn.execute(stmt):
                edges.setdefault((r.up, r.down), []).append(RunState(r.state))
        order = list(RunState)
        return [
            TriggerEdge(up, down, sorted(states, key=order.index))
            for (up, down), states in sorted(edges.items())
        ]

    def run_chain(self, run: Run) -> RunChain:
        """``run``'s links in run chains: the run whose end triggered it, and the runs its own end
        triggered (found through the trigger key's index, upstream first)."""
        stmt = select(runs.c.id, deployments.c.name.label("deployment"), runs.c.state).join(
            deployments, deployments.c.id == runs.c.deployment_id
        )
        with self.read() as conn:
            upstream = None
            if run.upstream_run_id is not None:
                found = conn.execute(stmt.where(runs.c.id == run.upstream_run_id)).first()
                upstream = None if found is None else to.run_link(found)
            downstream = conn.execute(stmt.where(runs.c.upstream_run_id == run.id).order_by(runs.c.id))
            return RunChain(run.upstream_run_id, upstream, [to.run_link(r) for r in downstream])

    def run_history(self, run_id: int) -> list[StateChange]:
        """Every transition of the run, oldest first: written in the transaction that made it, so
        the history is complete and in the order things happened (its ids are the order)."""
        with self.read() as conn:
            return [
                to.state_change(r)
                for r in conn.execute(
                    select(run_states).where(run_states.c.run_id == run_id).order_by(run_states.c.id)
                )
            ]

    def last_change_id(self) -> int:
        """The id of the newest state change recorded (0: none yet): where a live view starts."""
        with self.read() as conn:
            return int(conn.execute(select(func.max(run_states.c.id))).scalar() or 0)

    def changes_after(self, after: int, limit: int = 500) -> list[StateChange]:
        """Up to ``limit`` state changes of any run recorded after history id ``after``, oldest
        first, each with its run's deployment: pass the last id seen to follow every run."""
        stmt = (
            select(run_states, deployments.c.name.label("deployment"))
            .join(runs, runs.c.id == run_states.c.run_id)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(run_states.c.id > after)
            .order_by(run_states.c.id)
            .limit(limit)
        )
        with self.read() as conn:
            return [to.state_change(r) for r in conn.execute(stmt)]

    def run_logs(self, run_id: int, after_id: int = 0, limit: int = 10_000) -> list[LogLine]:
        """Up to ``limit`` lines of the run's output after line id ``after_id``, in order: pass the
        last id seen to follow a run without reading a line twice."""
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

    def deployments(self, include_archived: bool = False) -> list[DeploymentReport]:
        """Each deployment with its number of active schedules, its next run and its last finished
        run (the latest scheduled of its finished runs: the latest finished unless its runs
        overlapped).  One index range per deployment (``ix_runs_deployment_scheduled``) instead
        of a window over the whole history (0.6 s at 100,000 runs on SQLite)."""
        stmt = select(deployments).order_by(deployments.c.name)
        if not include_archived:
            stmt = stmt.where(deployments.c.archived_at.is_(None))
        n_schedules = (
            select(schedules.c.deployment_id, func.count())
            .where(schedules.c.active, schedules.c.archived_at.is_(None))
            .group_by(schedules.c.deployment_id)
        )
        # the waiting runs alone, by the partial index ix_runs_due (a GROUP BY in SQL makes SQLite
        # walk a whole index of the history to have them in order)
        waiting = select(runs.c.deployment_id, runs.c.due_at).where(runs.c.state == S.SCHEDULED.value)
        with self.read() as conn:
            found = [to.deployment(r) for r in conn.execute(stmt)]
            counts = dict(conn.execute(n_schedules).all())
            next_due: dict[int, datetime] = {}
            for dep_id, due in conn.execute(waiting):
                next_due[dep_id] = min(due, next_due.get(dep_id, due))
            lasts = _finished_of(conn, [dep.id for dep in found], 1)
        return [
            DeploymentReport(
                dep,
                int(counts.get(dep.id, 0)),
                next_due.get(dep.id),
                LastRun(last[0].id, last[0].state, last[0].finished_at) if (last := lasts[dep.id]) else None,
            )
            for dep in found
        ]

    def strips(self, deployment_ids: Iterable[int], size: int = 30) -> dict[int, Strip]:
        """The last ``size`` finished runs of each deployment, newest first (an index range each)."""
        with self.read() as conn:
            return {
                dep_id: Strip(found) for dep_id, found in _finished_of(conn, deployment_ids, size).items()
            }

    def deployment_names(self, include_archived: bool = True) -> list[str]:
        """Every deployment's name, in order (what a filter offers)."""
        stmt = select(deployments.c.name).order_by(deployments.c.name)
        if not include_archived:
            stmt = stmt.where(deployments.c.archived_at.is_(None))
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def deployment(self, name: str) -> Deployment:
        """The deployment (archived or not), or NotFound suggesting the closest name."""
        return to.deployment(self._named(deployments, "deployment", name))

    def schedules_of(self, deployment_id: int, include_archived: bool = False) -> list[Schedule]:
        """A deployment's schedules as stored (active or not), oldest first."""
        stmt = select(schedules).where(schedules.c.deployment_id == deployment_id).order_by(schedules.c.id)
        if not include_archived:
            stmt = stmt.where(schedules.c.archived_at.is_(None))
        with self.read() as conn:
            return [to.schedule(r) for r in conn.execute(stmt)]

    def active_schedules(self, deployment_id: int) -> list[Schedule]:
        """A deployment's active schedules as the database knows them: with the keys its runs carry,
        so backfilled and scheduled runs share one unique key."""
        return [s for s in self.schedules_of(deployment_id) if s.spec.active]

    def active_schedules_by_deployment(self) -> dict[int, list[Schedule]]:
        """Every deployment's active schedules (as ``active_schedules``), in one query."""
        stmt = select(schedules).where(schedules.c.archived_at.is_(None)).order_by(schedules.c.id)
        found: dict[int, list[Schedule]] = {}
        with self.read() as conn:
            for schedule in (to.schedule(r) for r in conn.execute(stmt)):
                if schedule.spec.active:
                    found.setdefault(schedule.deployment_id, []).append(schedule)
        return found

    def workers(self) -> list[Worker]:
        """Every worker that has registered and not been pruned, by name (see ``Worker.status_at``)."""
        with self.read() as conn:
            return [to.worker(r) for r in conn.execute(select(workers).order_by(workers.c.name))]

    def held_runs(self) -> dict[str, list[HeldRun]]:
        """The runs each worker holds now (claimed, running, being cancelled), by worker name."""
        held: dict[str, list[HeldRun]] = {}
        with self.read() as conn:
            names = deployment_names_by_id(conn)
            for row in sorted(active_runs(conn), key=lambda r: r.id):
                if row.worker is not None:
                    held.setdefault(row.worker, []).append(to.held_run(row, names[row.deployment_id]))
        return held

    def pool_names(self) -> list[str]:
        """Every pool, by name (what the metrics export a series for, zero or not)."""
        with self.read() as conn:
            return list(conn.execute(select(pools.c.name).order_by(pools.c.name)).scalars())

    def pool(self, name: str) -> Pool:
        """The pool, or NotFound suggesting the closest name."""
        return to.pool(self._named(pools, "pool", name))

    def pools(self, now: datetime, worker_timeout: float) -> list[PoolReport]:
        """Every pool with its queue (due, upcoming, oldest due), active runs, online workers and
        their slots, and the live deployments that use it, as one snapshot."""
        with self.read() as conn:
            return self._pools(conn, now, self._online_workers(conn, now, worker_timeout))

    def _pools(self, conn: Any, now: datetime, online_workers: list[Row[Any]]) -> list[PoolReport]:
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
        for w in online_workers:
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
        with self.read() as conn:
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

    def health(self, now: datetime, *, worker_timeout: float, late_after: float, window: float) -> Health:
        """What `orchd status` shows: leader, pools with their workers and queues, late runs (due
        longer than ``late_after`` ago), runs stuck past their lease, failures within ``window``."""
        with self.read() as conn:
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
            online = self._online_workers(conn, now, worker_timeout)
            return Health(
                now=now,
                leader=None if leader is None else to.scheduler_seen(leader),
                standbys=int(standbys),
                pools=self._pools(conn, now, online),
                workers_online=len(online),
                late=list(late),
                stuck=list(stuck),
                failures=int(failures),
            )

    def daemons_alive(self, now: datetime, *, worker_within: float, scheduler_within: float) -> list[str]:
        """The daemons that recorded themselves recently, as "worker NAME" / "scheduler NAME":
        what `orchd db reset` must not pull the database from under."""
        with self.read() as conn:
            found = [
                f"worker {name}"
                for name in conn.execute(
                    select(workers.c.name)
                    .where(
                        workers.c.status == "online",
                        workers.c.last_heartbeat >= now - timedelta(seconds=worker_within),
                    )
                    .order_by(workers.c.name)
                ).scalars()
            ]
            found += [
                f"scheduler {name}"
                for name in conn.execute(
                    select(schedulers.c.name)
                    .where(schedulers.c.last_tick_at >= now - timedelta(seconds=scheduler_within))
                    .order_by(schedulers.c.name)
                ).scalars()
            ]
        return found

    def live_runs(self) -> dict[tuple[str, str], int]:
        """Runs waiting or working, by (state, pool): the partial indexes of the queue serve it."""
        with self.read() as conn:
            return {
                (r.state, r.pool): int(r.n)
                for r in conn.execute(
                    select(runs.c.state, runs.c.pool, func.count().label("n"))
                    .where(runs.c.state.in_(LIVE))
                    .group_by(runs.c.state, runs.c.pool)
                )
            }

    def _named(self, table: Table, kind: str, name: str) -> Row[Any]:
        """The row of ``table`` called ``name``, or NotFound suggesting the closest existing name."""
        with self.read() as conn:
            row: Row[Any] | None = conn.execute(select(table).where(table.c.name == name)).first()
            if row is None:
                names = conn.execute(select(table.c.name)).scalars().all()
                raise NotFound(self._unknown(kind, name, names))
        return row

    @staticmethod
    def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
        hint = did_you_mean(name, known) or f" (see `orchd {kind} ls`)"
        return f"{kind} {name!r} not found{hint}"


def _selected(where: RunFilter) -> Select[Any]:
    """The runs ``where`` describes, with the columns of ``Run``."""
    stmt = select(*to.RUN_COLUMNS).join(deployments, deployments.c.id == runs.c.deployment_id)
    if where.states:
        stmt = stmt.where(runs.c.state.in_(list(where.states)))
    if where.deployment:  # by id, so the planners walk ix_runs_deployment_scheduled
        named = select(deployments.c.id).where(deployments.c.name == where.deployment).scalar_subquery()
        stmt = stmt.where(runs.c.deployment_id == named)
    if where.pool:
        stmt = stmt.where(runs.c.pool == where.pool)
    if where.since:
        stmt = stmt.where(runs.c.scheduled_for >= where.since)
    if where.until:
        stmt = stmt.where(runs.c.scheduled_for < where.until)
    if where.text:
        stmt = stmt.where(runs.c.error.icontains(where.text, autoescape=True))
    return stmt


def _finished_of(conn: Any, deployment_ids: Iterable[int], limit: int) -> dict[int, list[RunOutcome]]:
    """Each deployment's last ``limit`` finished runs, latest scheduled first, in one small
    statement: an index range each (``ix_runs_deployment_scheduled``), as a LATERAL join on
    PostgreSQL and a correlated IN list on SQLite, which has no LATERAL.  (A UNION of one SELECT
    per deployment read the same rows, but cost more to build, cache and plan than to run: the
    deployments page built two of them.)

    The deployment is matched by a range, not ``=``, and ordered by: with ``=`` PostgreSQL drops
    the constant from the ordering and, planning for any deployment, prefers walking
    ``ix_runs_scheduled`` until it meets one of its runs; for ``limit`` 1 and a deployment with
    few runs (or none) in a long history that walks all of it (0.2 s at a million runs)."""
    found: dict[int, list[RunOutcome]] = {dep_id: [] for dep_id in deployment_ids}
    recent = runs.alias("recent")
    last = (
        select(recent.c.id, recent.c.state, recent.c.scheduled_for, recent.c.started_at, recent.c.finished_at)
        .where(recent.c.deployment_id.between(deployments.c.id, deployments.c.id))
        .where(recent.c.state.in_([s.value for s in FINISHED]), recent.c.finished_at.is_not(None))
        .order_by(recent.c.deployment_id.desc(), recent.c.scheduled_for.desc(), recent.c.id.desc())
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        picked: Any = last.lateral("last")
        stmt = (
            select(deployments.c.id.label("deployment_id"), *picked.c)
            .select_from(deployments)
            .join(picked, true())
        )
    else:
        picked = runs
        chosen = last.with_only_columns(recent.c.id)
        stmt = (
            select(deployments.c.id.label("deployment_id"), *RUN_OUTCOME)
            .select_from(deployments)
            .join(runs, runs.c.id.in_(chosen))
        )
    stmt = stmt.order_by(picked.c.scheduled_for.desc(), picked.c.id.desc())
    for part in chunks(list(found)):
        for row in conn.execute(stmt.where(deployments.c.id.in_(part))):
            found[row.deployment_id].append(to.run_outcome(row))
    return found


def _planned(now: datetime) -> ColumnElement[bool]:
    """Runs still waiting for their time: neither due nor done."""
    return and_(runs.c.state == S.SCHEDULED.value, runs.c.due_at > now)


def active_runs(conn: Any) -> list[Row[Any]]:
    """Every active run (they are few: the workers' slots) by the partial index, read from ``runs``
    alone: joined, or ordered, SQLite prefers walking a whole index of the history instead."""
    columns = (runs.c.id, runs.c.deployment_id, runs.c.worker, runs.c.state, runs.c.started_at)
    return list(conn.execute(select(*columns).where(RUNS_ACTIVE)).all())


def deployment_names_by_id(conn: Any) -> dict[int, str]:
    return dict(conn.execute(select(deployments.c.id, deployments.c.name)).all())

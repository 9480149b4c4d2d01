"""The reads the web dashboard needs beyond the CLI's: pages of runs, the overview's charts, the
live feed's cursor.  Every query is bounded (a page, a time window, a LIMIT) and served by an
index, so a page stays fast however long the run history grows:

* run pages: keyset on ``(scheduled_for, id)`` (``ix_runs_scheduled``; per deployment
  ``ix_runs_deployment_scheduled``), never OFFSET;
* the overview's hourly outcomes, timeline and last failures: ``ix_runs_finished_at`` over a
  window, plus the active runs by their partial index;
* the live feed: ``run_states`` and ``run_logs`` after an id (primary key, ``ix_run_logs_run``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, func, or_, select

from orchd.db import rows as to
from orchd.db.schema import RUNS_ACTIVE, deployments, run_logs, run_states, runs, schedules
from orchd.db.store import Store
from orchd.models import DeploymentReport, LastRun, Run
from orchd.states import FINISHED, RETRYABLE, RunState

S = RunState


@dataclass(frozen=True)
class RunFilter:
    """What `orchd run ls` filters on, plus a time range and text in the error."""

    states: Sequence[str] = ()
    deployment: str | None = None
    pool: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None


@dataclass(frozen=True)
class RunPage:
    runs: list[Run]
    #: (time, id) of the last run shown, when there are more: the keyset cursor of the next page.
    next: tuple[datetime, int] | None


@dataclass(frozen=True)
class Bar:
    """A run on the overview's timeline."""

    id: int
    deployment: str
    state: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class HeldRun:
    id: int
    deployment: str
    state: str


@dataclass
class Overview:
    """The overview's pictures: outcomes per hour, a timeline, the last failures."""

    hours: list[datetime]
    #: hour start -> state -> number of runs that finished in that hour
    outcomes: dict[datetime, dict[str, int]] = field(default_factory=dict)
    bars: list[Bar] = field(default_factory=list)
    failures: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Strip:
    """A deployment's last finished runs (newest first), for the squares and the sparkline."""

    runs: list[Row[Any]]

    @property
    def success_rate(self) -> float | None:
        done = [r for r in self.runs if r.state != S.CANCELLED.value]
        return sum(r.state == S.COMPLETED.value for r in done) / len(done) if done else None


class Dashboard:
    def __init__(self, store: Store) -> None:
        self.store = store
        #: finished runs per past hour and state (see _outcomes)
        self._hours: dict[datetime, dict[str, int]] = {}

    def runs_page(
        self, where: RunFilter, now: datetime, *, after: tuple[datetime, int] | None, limit: int
    ) -> RunPage:
        """Runs that are due or done, newest scheduled first; ``after`` continues a page."""
        stmt = self._filtered(where).where(or_(runs.c.state != S.SCHEDULED.value, runs.c.due_at <= now))
        if after is not None:
            at, run_id = after
            stmt = stmt.where(
                or_(runs.c.scheduled_for < at, and_(runs.c.scheduled_for == at, runs.c.id < run_id))
            )
        stmt = stmt.order_by(runs.c.scheduled_for.desc(), runs.c.id.desc()).limit(limit + 1)
        return self._page(stmt, limit, "scheduled_for")

    def upcoming(
        self, where: RunFilter, now: datetime, *, after: tuple[datetime, int] | None, limit: int
    ) -> RunPage:
        """Runs waiting for their time, soonest first."""
        stmt = self._filtered(where).where(runs.c.state == S.SCHEDULED.value, runs.c.due_at > now)
        if after is not None:
            at, run_id = after
            stmt = stmt.where(or_(runs.c.due_at > at, and_(runs.c.due_at == at, runs.c.id > run_id)))
        stmt = stmt.order_by(runs.c.due_at, runs.c.id).limit(limit + 1)
        return self._page(stmt, limit, "due_at")

    @staticmethod
    def _filtered(where: RunFilter) -> Any:
        stmt = select(*to.RUN_COLUMNS).join(deployments, deployments.c.id == runs.c.deployment_id)
        if where.states:
            stmt = stmt.where(runs.c.state.in_(list(where.states)))
        if where.deployment:  # by id, so the planner knows to walk ix_runs_deployment_scheduled
            stmt = stmt.where(
                runs.c.deployment_id
                == select(deployments.c.id).where(deployments.c.name == where.deployment).scalar_subquery()
            )
        if where.pool:
            stmt = stmt.where(runs.c.pool == where.pool)
        if where.since:
            stmt = stmt.where(runs.c.scheduled_for >= where.since)
        if where.until:
            stmt = stmt.where(runs.c.scheduled_for < where.until)
        if where.text:
            stmt = stmt.where(runs.c.error.icontains(where.text, autoescape=True))
        return stmt

    def _page(self, stmt: Any, limit: int, key: str) -> RunPage:
        with self.store.read() as conn:
            found = [to.run(r) for r in conn.execute(stmt)]
        if len(found) <= limit:
            return RunPage(found, None)
        last = found[limit - 1]
        return RunPage(found[:limit], (getattr(last, key), last.id))

    def overview(self, now: datetime, *, hours: int = 24, timeline: timedelta, bars: int = 200) -> Overview:
        """Finished runs per hour and state over the last ``hours``; runs active or finished within
        ``timeline`` as bars (at most ``bars``, the latest); the last ten failures."""
        top = now.replace(minute=0, second=0, microsecond=0)
        starts = [top - timedelta(hours=h) for h in range(hours - 1, -1, -1)]
        view = Overview(starts)
        window = now - timeline
        bar_columns = (
            runs.c.id,
            deployments.c.name.label("deployment"),
            runs.c.state,
            runs.c.started_at,
            runs.c.finished_at,
        )
        with self.store.read() as conn:
            for start in starts:
                view.outcomes[start] = self._outcomes(conn, start, now)
            joined = select(*bar_columns).join(deployments, deployments.c.id == runs.c.deployment_id)
            done = conn.execute(
                joined.where(runs.c.finished_at >= window, runs.c.started_at.is_not(None))
                .order_by(runs.c.finished_at.desc())
                .limit(bars)
            ).all()
            names = self._names(conn)
            active = sorted(
                (r for r in self._active(conn) if r.started_at is not None),
                key=lambda r: r.started_at,
                reverse=True,
            )[:bars]
            view.bars = [
                Bar(r.id, names[r.deployment_id], r.state, r.started_at, r.finished_at) for r in active
            ] + [Bar(r.id, r.deployment, r.state, r.started_at, r.finished_at) for r in done]
            view.failures = [
                to.run(r)
                for r in conn.execute(
                    select(*to.RUN_COLUMNS)
                    .join(deployments, deployments.c.id == runs.c.deployment_id)
                    .where(runs.c.finished_at.is_not(None), runs.c.state.in_([s.value for s in RETRYABLE]))
                    .order_by(runs.c.finished_at.desc())
                    .limit(10)
                )
            ]
        return view

    def _outcomes(self, conn: Any, start: datetime, now: datetime) -> dict[str, int]:
        """Runs that finished in the hour from ``start``, by state.  A past hour cannot change (a
        run is finished at the time it finishes), so it is counted once and remembered."""
        hour = start + timedelta(hours=1)
        if hour <= now and start in self._hours:
            return self._hours[start]
        counts = {
            state: int(n)
            for state, n in conn.execute(
                select(runs.c.state, func.count())
                .where(runs.c.finished_at >= start, runs.c.finished_at < hour)
                .where(runs.c.state.in_([s.value for s in FINISHED]))
                .group_by(runs.c.state)
            )
        }
        if hour <= now:
            self._hours = {h: c for h, c in self._hours.items() if h > now - timedelta(days=2)}
            self._hours[start] = counts
        return counts

    def strips(self, deployment_ids: Sequence[int], size: int = 30) -> dict[int, Strip]:
        """The last ``size`` finished runs of each deployment (an index range per deployment)."""
        found: dict[int, Strip] = {}
        with self.store.read() as conn:
            for dep_id in deployment_ids:
                found[dep_id] = Strip(
                    list(
                        conn.execute(
                            select(
                                runs.c.id,
                                runs.c.state,
                                runs.c.scheduled_for,
                                runs.c.started_at,
                                runs.c.finished_at,
                            )
                            .where(
                                runs.c.deployment_id == dep_id,
                                runs.c.state.in_([s.value for s in FINISHED]),
                            )
                            .order_by(runs.c.scheduled_for.desc())
                            .limit(size)
                        ).all()
                    )
                )
        return found

    def deployments(self, include_archived: bool = False) -> list[DeploymentReport]:
        """What ``Store.deployments`` reports (`deployment ls`), read with one index range per
        deployment instead of a window over the whole history (0.6 s at 100,000 runs on SQLite):
        the last finished run is the latest *scheduled* of the finished ones, which is the latest
        finished one unless runs of one deployment overlap."""
        stmt = select(deployments).order_by(deployments.c.name)
        if not include_archived:
            stmt = stmt.where(deployments.c.archived_at.is_(None))
        with self.store.read() as conn:
            found = [to.deployment(r) for r in conn.execute(stmt)]
            counts = dict(
                conn.execute(
                    select(schedules.c.deployment_id, func.count())
                    .where(schedules.c.active, schedules.c.archived_at.is_(None))
                    .group_by(schedules.c.deployment_id)
                ).all()
            )
            # the SCHEDULED rows alone, by the partial index ix_runs_due (a GROUP BY in SQL makes
            # SQLite walk a whole index of the history to have them in order)
            upcoming: dict[int, datetime] = {}
            for dep_id, due in conn.execute(
                select(runs.c.deployment_id, runs.c.due_at).where(runs.c.state == S.SCHEDULED.value)
            ):
                upcoming[dep_id] = min(due, upcoming.get(dep_id, due))
            reports = []
            for dep in found:
                last = conn.execute(
                    select(runs.c.id, runs.c.state, runs.c.finished_at)
                    .where(runs.c.deployment_id == dep.id, runs.c.state.in_([s.value for s in FINISHED]))
                    .order_by(runs.c.scheduled_for.desc(), runs.c.id.desc())
                    .limit(1)
                ).first()
                reports.append(
                    DeploymentReport(
                        dep,
                        int(counts.get(dep.id, 0)),
                        upcoming.get(dep.id),
                        last and LastRun(last.id, RunState(last.state), last.finished_at),
                    )
                )
        return reports

    def deployment_names(self) -> list[str]:
        with self.store.read() as conn:
            return list(conn.execute(select(deployments.c.name).order_by(deployments.c.name)).scalars())

    def held_runs(self, worker_names: Sequence[str]) -> dict[str, list[HeldRun]]:
        """The runs each worker holds now."""
        held: dict[str, list[HeldRun]] = {name: [] for name in worker_names}
        if not worker_names:
            return held
        with self.store.read() as conn:
            names = self._names(conn)
            for row in sorted(self._active(conn), key=lambda r: r.id):
                if row.worker in held:
                    held[row.worker].append(HeldRun(row.id, names[row.deployment_id], row.state))
        return held

    @staticmethod
    def _active(conn: Any) -> list[Row[Any]]:
        """Every active run (they are few: the workers' slots) by the partial index, from ``runs``
        alone: joined, or ordered, SQLite prefers walking a whole index of the history instead."""
        return list(
            conn.execute(
                select(
                    runs.c.id,
                    runs.c.deployment_id,
                    runs.c.worker,
                    runs.c.state,
                    runs.c.started_at,
                    runs.c.finished_at,
                ).where(RUNS_ACTIVE)
            ).all()
        )

    @staticmethod
    def _names(conn: Any) -> dict[int, str]:
        return dict(conn.execute(select(deployments.c.id, deployments.c.name)).all())

    # ------------------------------------------------------------------ the live feed

    def last_event_id(self) -> int:
        with self.store.read() as conn:
            return int(conn.execute(select(func.max(run_states.c.id))).scalar() or 0)

    def events_after(self, after: int, limit: int = 500) -> list[Row[Any]]:
        """State changes recorded after history id ``after``, oldest first, with the deployment."""
        with self.store.read() as conn:
            return list(
                conn.execute(
                    select(
                        run_states.c.id,
                        run_states.c.run_id,
                        deployments.c.name.label("deployment"),
                        run_states.c.from_state,
                        run_states.c.to_state,
                        run_states.c.attempt,
                        run_states.c.at,
                        run_states.c.actor,
                        run_states.c.reason,
                    )
                    .join(runs, runs.c.id == run_states.c.run_id)
                    .join(deployments, deployments.c.id == runs.c.deployment_id)
                    .where(run_states.c.id > after)
                    .order_by(run_states.c.id)
                    .limit(limit)
                ).all()
            )

    def last_log_id(self, run_id: int) -> int:
        with self.store.read() as conn:
            return int(
                conn.execute(select(func.max(run_logs.c.id)).where(run_logs.c.run_id == run_id)).scalar() or 0
            )

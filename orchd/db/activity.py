"""What happened lately, for the dashboard's overview: runs finished per hour by state, the runs
of a recent window as timeline bars, and the last failures.

Every read is bounded by a time window or a LIMIT and served by an index (``ix_runs_finished_at``
for finished runs, the partial ``ix_runs_active_lease`` for active ones), so the overview costs
the same at a million runs as at a thousand.  A past hour's count is read once and remembered by
this object: a run that finished in it keeps its state and time.  (The exception, a person's
`orchd run retry` of a run finished in a past hour, leaves that hour's count one too high until
the count is forgotten after two days; the chart shows outcomes, not an audit.)
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from orchd.db import rows as to
from orchd.db.base import Access
from orchd.db.reports import active_runs, deployment_names_by_id
from orchd.db.schema import deployments, runs
from orchd.models import Overview
from orchd.states import FINISHED, RETRYABLE

#: Past hours' counts older than this are forgotten (the chart shows the last 24 hours).
_KEEP = timedelta(days=2)
#: An hour's count is remembered only once it ended this long ago: a run's end is written by its
#: worker, whose clock and commit may lag behind this process's clock.
_SETTLED = timedelta(minutes=5)


class Activity(Access):
    def __init__(self, engine: Engine, actor: str) -> None:
        super().__init__(engine, actor)
        #: finished runs per past hour and state (see _outcomes)
        self._hours: dict[datetime, dict[str, int]] = {}
        self._hours_lock = threading.Lock()

    def overview(self, now: datetime, *, hours: int = 24, timeline: timedelta, bars: int = 200) -> Overview:
        """Finished runs per hour and state over the last ``hours`` (the current one included);
        the runs active now or finished within ``timeline`` as bars (at most ``bars`` of each,
        the latest); the last ten failures."""
        top = now.replace(minute=0, second=0, microsecond=0)
        starts = [top - timedelta(hours=h) for h in range(hours - 1, -1, -1)]
        finished_bars = (
            select(
                runs.c.id,
                deployments.c.name.label("deployment"),
                runs.c.state,
                runs.c.started_at,
                runs.c.finished_at,
            )
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(runs.c.finished_at >= now - timeline, runs.c.started_at.is_not(None))
            .order_by(runs.c.finished_at.desc())
            .limit(bars)
        )
        failures = (
            select(*to.RUN_COLUMNS)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(runs.c.finished_at.is_not(None), runs.c.state.in_([s.value for s in RETRYABLE]))
            .order_by(runs.c.finished_at.desc())
            .limit(10)
        )
        with self.read() as conn:
            outcomes = {start: self._outcomes(conn, start, now) for start in starts}
            names = deployment_names_by_id(conn)
            started = sorted((r for r in active_runs(conn) if r.started_at), key=lambda r: r.started_at)
            return Overview(
                hours=starts,
                outcomes=outcomes,
                bars=[to.timeline_bar(r, names[r.deployment_id]) for r in reversed(started[-bars:])]
                + [to.timeline_bar(r, r.deployment) for r in conn.execute(finished_bars)],
                failures=[to.run(r) for r in conn.execute(failures)],
            )

    def _outcomes(self, conn: Any, start: datetime, now: datetime) -> dict[str, int]:
        """Runs that finished in the hour from ``start``, by state; a past hour is read once."""
        end = start + timedelta(hours=1)
        settled = end <= now - _SETTLED
        with self._hours_lock:
            known = self._hours.get(start) if settled else None
        if known is not None:
            return known
        counts = {
            state: int(n)
            for state, n in conn.execute(
                select(runs.c.state, func.count())
                .where(runs.c.finished_at >= start, runs.c.finished_at < end)
                .where(runs.c.state.in_([s.value for s in FINISHED]))
                .group_by(runs.c.state)
            )
        }
        if settled:
            with self._hours_lock:
                self._hours = {h: c for h, c in self._hours.items() if h > now - _KEEP}
                self._hours[start] = counts
        return counts

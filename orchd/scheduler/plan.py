"""What one tick materializes for one schedule: a pure function of the schedule, its cursor and now.

Rules (see README, "Schedules"):
* fire times from the cursor up to ``horizon_end`` become runs, but never more than
  ``max_future`` runs lie in the future per schedule (those already materialized count);
* fire times older than ``now - tolerance`` were missed (scheduler down, deployment paused):
  ``catchup = none`` skips them, ``latest`` keeps the most recent, ``all`` keeps the most recent
  ``catchup_limit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import groupby

from orchd.models import DueSchedule, Materialization, OverdueRun
from orchd.schedules import TICK


def plan(
    schedule: DueSchedule,
    now: datetime,
    horizon_end: datetime,
    *,
    max_future: int,
    catchup_limit: int,
    tolerance: timedelta,
) -> Materialization:
    spec = schedule.spec
    floor = now - tolerance
    cursor: datetime | None = schedule.next_fire_at
    times: list[datetime] = []
    if schedule.next_fire_at < floor:
        if schedule.catchup != "none":
            keep = 1 if schedule.catchup == "latest" else catchup_limit
            times.extend(spec.last_fire_times(schedule.next_fire_at, floor, keep))
        cursor = spec.next_at_or_after(floor)
    if cursor is None:
        return Materialization(schedule, times, None)
    already = len(spec.fire_times(now + TICK, cursor - TICK, max_future)) if cursor > now else 0
    upcoming = spec.fire_times(cursor, horizon_end, max_future - already) if already < max_future else []
    times.extend(upcoming)
    next_fire = spec.next_after(upcoming[-1]) if upcoming else cursor
    return Materialization(schedule, times, next_fire)


def missed_while_down(overdue: Sequence[OverdueRun], floor: datetime, catchup_limit: int) -> list[int]:
    """Which runs materialized before a downtime catch-up turns away on taking over, so that it
    governs them as it governs the fire times never materialized: ``none`` runs none of them,
    ``latest`` the most recent one only, ``all`` the most recent ``catchup_limit`` — counting the
    fire times after the schedule's cursor that ``plan`` catches up itself, which are more recent."""
    missed: list[int] = []
    for _, group in groupby(
        sorted(overdue, key=lambda r: (r.schedule_id, r.scheduled_for)), lambda r: r.schedule_id
    ):
        runs = list(group)
        policy, cursor = runs[0].catchup, runs[0].cursor
        # the fire times ``plan`` will catch up from the cursor come after these and count first
        later = (
            len(runs[0].spec.fire_times(cursor, floor - TICK, catchup_limit))
            if cursor and cursor < floor
            else 0
        )
        keep = {"none": 0, "latest": 1 - min(1, later)}.get(policy, catchup_limit - later)
        missed += [r.id for r in runs[: max(0, len(runs) - keep)]]
    return missed

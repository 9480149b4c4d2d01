"""What one scheduler tick materializes for one schedule: orchd.scheduler.plan.plan (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchd.models import DueSchedule, Materialization
from orchd.scheduler.plan import plan
from orchd.schedules import ScheduleSpec, parse_schedule

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
HORIZON = timedelta(minutes=10)
TOLERANCE = timedelta(seconds=5)
EVERY_MINUTE = parse_schedule({"interval": "1m"})
TICK = timedelta(microseconds=1)


def due(next_fire_at: datetime, catchup: str = "none", spec: ScheduleSpec = EVERY_MINUTE) -> DueSchedule:
    return DueSchedule(
        id=1,
        deployment_id=1,
        deployment="etl",
        spec=spec,
        next_fire_at=next_fire_at,
        pool="default",
        priority=0,
        max_attempts=1,
        catchup=catchup,
        parameters={},
    )


def tick(
    schedule: DueSchedule,
    *,
    now: datetime = NOW,
    max_future: int = 100,
    catchup_limit: int = 100,
    tolerance: timedelta = TOLERANCE,
) -> Materialization:
    return plan(
        schedule,
        now,
        now + HORIZON,
        max_future=max_future,
        catchup_limit=catchup_limit,
        tolerance=tolerance,
    )


def minutes(first: int, last: int) -> list[datetime]:
    """NOW + first minutes ... NOW + last minutes, inclusive."""
    return [NOW + timedelta(minutes=m) for m in range(first, last + 1)]


def test_cursor_at_now_materializes_up_to_the_horizon() -> None:
    schedule = due(NOW)
    result = tick(schedule)
    assert result.schedule is schedule
    assert list(result.fire_times) == minutes(0, 10)
    assert result.next_fire_at == NOW + timedelta(minutes=11)


def test_next_tick_continues_without_gaps_or_duplicates() -> None:
    first = tick(due(NOW))
    assert first.next_fire_at is not None
    later = NOW + timedelta(minutes=1)
    second = tick(due(first.next_fire_at), now=later)
    assert list(second.fire_times) == minutes(11, 11)
    assert second.next_fire_at == NOW + timedelta(minutes=12)


def test_cursor_beyond_the_horizon_materializes_nothing() -> None:
    cursor = NOW + HORIZON + timedelta(minutes=1)
    result = tick(due(cursor), max_future=100)
    assert list(result.fire_times) == []
    assert result.next_fire_at == cursor


def test_max_future_caps_the_runs_of_one_tick() -> None:
    result = tick(due(NOW), max_future=3)
    assert list(result.fire_times) == minutes(0, 2)
    assert result.next_fire_at == NOW + timedelta(minutes=3)


def test_max_future_counts_runs_already_materialized() -> None:
    # runs at +1m and +2m exist from an earlier tick, so only 3 more may be added
    result = tick(due(NOW + timedelta(minutes=3)), max_future=5)
    assert list(result.fire_times) == minutes(3, 5)
    assert result.next_fire_at == NOW + timedelta(minutes=6)


def test_max_future_reached_adds_nothing_and_keeps_the_cursor() -> None:
    cursor = NOW + timedelta(minutes=5)
    result = tick(due(cursor), max_future=4)
    assert list(result.fire_times) == []
    assert result.next_fire_at == cursor


@pytest.mark.parametrize(
    ("catchup", "catchup_limit", "missed"),
    [
        ("none", 100, []),
        ("latest", 100, minutes(-1, -1)),
        ("all", 100, minutes(-60, -1)),
        ("all", 5, minutes(-5, -1)),
        ("all", 1, minutes(-1, -1)),
    ],
)
def test_catch_up_after_downtime(catchup: str, catchup_limit: int, missed: list[datetime]) -> None:
    result = tick(due(NOW - timedelta(hours=1), catchup), catchup_limit=catchup_limit)
    assert list(result.fire_times) == missed + minutes(0, 10)
    assert result.next_fire_at == NOW + timedelta(minutes=11)


def test_missed_runs_do_not_count_against_max_future() -> None:
    result = tick(due(NOW - timedelta(hours=1), "all"), max_future=2, catchup_limit=100)
    assert list(result.fire_times) == minutes(-60, -1) + minutes(0, 1)
    assert result.next_fire_at == NOW + timedelta(minutes=2)


@pytest.mark.parametrize("catchup", ["none", "latest", "all"])
def test_fire_time_within_tolerance_is_not_missed(catchup: str) -> None:
    result = tick(due(NOW, catchup), now=NOW + timedelta(seconds=3), tolerance=timedelta(seconds=5))
    assert list(result.fire_times) == minutes(0, 10)
    assert result.next_fire_at == NOW + timedelta(minutes=11)


def test_fire_time_older_than_tolerance_is_missed() -> None:
    result = tick(due(NOW, "none"), now=NOW + timedelta(seconds=3), tolerance=timedelta(seconds=1))
    assert list(result.fire_times) == minutes(1, 10)
    assert result.next_fire_at == NOW + timedelta(minutes=11)


def test_at_schedule_is_exhausted_after_its_run() -> None:
    soon = parse_schedule({"at": (NOW + timedelta(minutes=5)).isoformat()})
    result = tick(due(NOW + timedelta(minutes=5), spec=soon))
    assert list(result.fire_times) == [NOW + timedelta(minutes=5)]
    assert result.next_fire_at is None


def test_at_schedule_beyond_the_horizon_waits() -> None:
    later = parse_schedule({"at": (NOW + timedelta(days=1)).isoformat()})
    result = tick(due(NOW + timedelta(days=1), spec=later))
    assert list(result.fire_times) == []
    assert result.next_fire_at == NOW + timedelta(days=1)


@pytest.mark.parametrize(("catchup", "expected"), [("none", []), ("latest", [NOW - timedelta(hours=1)])])
def test_missed_at_schedule_is_exhausted(catchup: str, expected: list[datetime]) -> None:
    past = parse_schedule({"at": (NOW - timedelta(hours=1)).isoformat()})
    result = tick(due(NOW - timedelta(hours=1), catchup, spec=past))
    assert list(result.fire_times) == expected
    assert result.next_fire_at is None


@settings(max_examples=150, deadline=None)
@given(
    cursor_min=st.integers(-180, 15),
    late=st.sampled_from([0, 2, 4, 5, 7, 30]),  # seconds the tick runs after a whole minute
    catchup=st.sampled_from(["none", "latest", "all"]),
    max_future=st.integers(0, 15),
    catchup_limit=st.integers(0, 10),
)
def test_plan_invariants(
    cursor_min: int, late: int, catchup: str, max_future: int, catchup_limit: int
) -> None:
    now = NOW + timedelta(seconds=late)
    cursor = NOW + timedelta(minutes=cursor_min)
    result = tick(due(cursor, catchup), now=now, max_future=max_future, catchup_limit=catchup_limit)
    times = list(result.fire_times)
    assert all(a < b for a, b in pairwise(times))
    # missed: fire times in [cursor, now - tolerance), of which the policy keeps the most recent ones
    floor = now - TOLERANCE
    behind = EVERY_MINUTE.fire_times(cursor, floor - TICK, 10_000)
    keep = min({"none": 0, "latest": 1, "all": catchup_limit}[catchup], len(behind))
    missed = behind[len(behind) - keep :]
    assert times[:keep] == missed
    # upcoming: consecutive fire times from the first one not missed, within the horizon
    upcoming = times[keep:]
    first = EVERY_MINUTE.next_at_or_after(max(cursor, floor))
    assert first is not None
    assert upcoming == EVERY_MINUTE.fire_times(first, now + HORIZON, len(upcoming))
    # ... as many as the horizon and max_future (counting runs already in the future) allow
    already = len(EVERY_MINUTE.fire_times(now + TICK, cursor - TICK, max_future))
    assert already + len([t for t in upcoming if t > now]) <= max(max_future, already)
    assert result.next_fire_at is not None
    assert result.next_fire_at > now + HORIZON or already + len(upcoming) >= max_future
    assert result.next_fire_at == (EVERY_MINUTE.next_after(upcoming[-1]) if upcoming else first)

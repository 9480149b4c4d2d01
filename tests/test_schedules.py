"""Fire-time semantics of orchd.schedules: Vixie cron, DST, epoch-anchored intervals, `at`, keys, errors.

Pure tests: every instant is passed in explicitly, nothing reads the clock or a database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchd.schedules import ScheduleSpec, parse_schedule

FAR = datetime(2100, 1, 1, tzinfo=UTC)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# 2026 DST changes (UTC instants), used to aim property tests at the hard part.
TRANSITIONS = {
    "Europe/Berlin": [datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)],
    "America/New_York": [datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC)],
    "Australia/Lord_Howe": [datetime(2026, 4, 4, 15, tzinfo=UTC), datetime(2026, 10, 3, 15, 30, tzinfo=UTC)],
}


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def spec(expr: str, **raw: Any) -> ScheduleSpec:
    return parse_schedule({"cron": expr, **raw})


def walls(times: Sequence[datetime], tz: str) -> list[str]:
    """Local wall times with their UTC offset, the way a user reads them."""
    return [t.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M:%S%z") for t in times]


def assert_well_formed(times: Sequence[datetime]) -> None:
    """Aware UTC, strictly increasing (so no duplicates)."""
    assert all(t.tzinfo is UTC for t in times)
    assert all(a < b for a, b in pairwise(times))


def offset(t: datetime, zone: ZoneInfo) -> timedelta | None:
    return t.astimezone(zone).utcoffset()


def near_dst(zone: ZoneInfo, t: datetime) -> bool:
    return offset(t - timedelta(hours=3), zone) != offset(t + timedelta(hours=3), zone)


# --- Vixie cron -------------------------------------------------------------------------------------------


def weekdays_fired(dow: str) -> set[str]:
    """Names of the weekdays a daily-noon schedule with this day-of-week field fires on (3 weeks)."""
    times = spec(f"0 12 * * {dow}").fire_times(utc(2026, 1, 1), utc(2026, 1, 21, 23), 100)
    return {t.strftime("%a").lower() for t in times}


@pytest.mark.parametrize("dow", ["0", "7", "sun", "SUN", "Sun", "0,7"])
def test_day_of_week_0_and_7_are_sunday(dow: str) -> None:
    times = spec(f"0 12 * * {dow}").fire_times(utc(2026, 1, 1), utc(2026, 2, 1), 100)
    assert times == [utc(2026, 1, d, 12) for d in (4, 11, 18, 25)]


@pytest.mark.parametrize(
    ("dow", "expected"),
    [
        ("1-5", {"mon", "tue", "wed", "thu", "fri"}),
        ("mon-fri", {"mon", "tue", "wed", "thu", "fri"}),
        ("5-7", {"fri", "sat", "sun"}),
        ("6-7", {"sat", "sun"}),
        ("7-7", {"sun"}),
        ("0-7", set(DOW_NAMES)),
        ("sun-sat", set(DOW_NAMES)),
        ("*/2", {"sun", "tue", "thu", "sat"}),
        ("*/3", {"sun", "wed", "sat"}),
        ("1-5/2", {"mon", "wed", "fri"}),
        ("1-7/2", {"mon", "wed", "fri", "sun"}),
        ("sat,sun", {"sat", "sun"}),
        ("mon,3,fri", {"mon", "wed", "fri"}),
        ("*", set(DOW_NAMES)),
    ],
)
def test_day_of_week_names_ranges_and_steps(dow: str, expected: set[str]) -> None:
    assert weekdays_fired(dow) == expected


def is_dow(d: date, *names: str) -> bool:
    return d.strftime("%a").lower() in names


@pytest.mark.parametrize(
    ("expr", "matches"),
    [
        # both restricted: either matches (every Monday, and the 1st)
        ("0 12 1 * 1", lambda d: d.day == 1 or d.weekday() == 0),
        ("0 12 13 * fri", lambda d: d.day == 13 or d.weekday() == 4),
        ("0 12 1-7 * mon", lambda d: d.day <= 7 or d.weekday() == 0),
        # one of them starts with '*': both must match, as usual
        ("0 12 1 * */2", lambda d: d.day == 1 and is_dow(d, "sun", "tue", "thu", "sat")),
        ("0 12 */2 * 1", lambda d: d.day % 2 == 1 and d.weekday() == 0),
        ("0 12 * * 1", lambda d: d.weekday() == 0),
        ("0 12 15 * *", lambda d: d.day == 15),
        ("0 12 1 jan,jul *", lambda d: d.day == 1 and d.month in (1, 7)),
        ("0 12 * 2 0", lambda d: d.month == 2 and d.weekday() == 6),
    ],
)
def test_day_of_month_and_day_of_week(expr: str, matches: Callable[[date], bool]) -> None:
    times = spec(expr).fire_times(utc(2026, 1, 1), utc(2026, 12, 31, 23), 1000)
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(365)]
    assert times == [utc(d.year, d.month, d.day, 12) for d in days if matches(d)]


def test_six_fields_put_seconds_first() -> None:
    every_10s = spec("*/10 * * * * *")
    assert every_10s.fire_times(utc(2026, 1, 1, 9, 0, 1), FAR, 4) == [
        utc(2026, 1, 1, 9, 0, 10),
        utc(2026, 1, 1, 9, 0, 20),
        utc(2026, 1, 1, 9, 0, 30),
        utc(2026, 1, 1, 9, 0, 40),
    ]
    assert spec("30 15 10 * * *").fire_times(utc(2026, 1, 1), FAR, 2) == [
        utc(2026, 1, 1, 10, 15, 30),
        utc(2026, 1, 2, 10, 15, 30),
    ]


def test_five_fields_fire_on_the_minute() -> None:
    assert spec("* * * * *").fire_times(utc(2026, 1, 1, 9, 0, 30), FAR, 2) == [
        utc(2026, 1, 1, 9, 1),
        utc(2026, 1, 1, 9, 2),
    ]


def test_cron_timezone_is_wall_clock_and_output_is_utc() -> None:
    times = spec("0 9 * * *", timezone="Asia/Kolkata").fire_times(utc(2026, 1, 1), FAR, 2)
    assert times == [utc(2026, 1, 1, 3, 30), utc(2026, 1, 2, 3, 30)]
    assert_well_formed(times)


# --- property tests: independent oracles ----------------------------------------------------------------


def cron_field(
    lo: int,
    hi: int,
    *,
    names: Sequence[str] = (),
    range_lo_max: int | None = None,
    max_step: int | None = None,
) -> st.SearchStrategy[str]:
    """A random crontab field over lo..hi: '*' or a list of values, ranges and steps.

    Ranges are never degenerate ("5-5": croniter reads it as "*") and steps never exceed their range
    ("0-5/10": APScheduler rejects it)."""
    value = st.integers(lo, hi).map(str)
    if names:
        value = value | st.sampled_from(names)
    bounds = st.integers(lo, (hi if range_lo_max is None else range_lo_max) - 1).flatmap(
        lambda a: st.tuples(st.just(a), st.integers(a + 1, hi))
    )
    span = bounds.map(lambda r: f"{r[0]}-{r[1]}")
    every = st.integers(1, hi - lo if max_step is None else max_step).map(lambda k: f"*/{k}")
    span_step = bounds.flatmap(lambda r: st.integers(1, r[1] - r[0]).map(lambda k: f"{r[0]}-{r[1]}/{k}"))
    return st.just("*") | st.lists(st.one_of(value, span, every, span_step), min_size=1, max_size=3).map(
        ",".join
    )


# day-of-month stays within 1-28 so that every expression fires; day-of-week ranges never start at 7
# ("7-7" is covered by the examples above; croniter mishandles it).
CRON_EXPRS = st.tuples(
    cron_field(0, 59),
    cron_field(0, 23),
    cron_field(1, 28),
    cron_field(1, 12, names=MONTH_NAMES),
    cron_field(0, 7, names=DOW_NAMES, range_lo_max=6, max_step=6),
).map(" ".join)


def vixie_values(text: str, lo: int, hi: int, names: Sequence[str], first_name: int) -> set[int]:
    """crontab(5) field -> the set of values it allows (only the forms CRON_EXPRS generates)."""
    out: set[int] = set()
    for item in text.lower().split(","):
        base, _, step = item.partition("/")
        ends = [lo, hi] if base == "*" else base.split("-")
        a, b = (names.index(x) + first_name if x in names else int(x) for x in (ends[0], ends[-1]))
        out.update(range(a, b + 1, int(step or 1)))
    return out


def oracle_fire_times(expr: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """orchd's documented semantics by brute force: step through wall-clock minutes, then map to instants.

    A matching wall time in a spring-forward gap fires shifted forward by the gap (zoneinfo's fold=0
    reading of a missing time); a repeated one fires at its first occurrence, and at the second as well
    when the hour field is '*'.
    """
    zone = ZoneInfo(tz)
    minute, hour, dom, month, dow = expr.split()
    minutes = vixie_values(minute, 0, 59, (), 0)
    hours = vixie_values(hour, 0, 23, (), 0)
    doms = vixie_values(dom, 1, 31, (), 0)
    months = vixie_values(month, 1, 12, MONTH_NAMES, 1)
    dows = {d % 7 for d in vixie_values(dow, 0, 7, DOW_NAMES, 0)}
    either = not (dom.startswith("*") or dow.startswith("*"))
    found: set[datetime] = set()
    wall = start.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) - timedelta(hours=3)
    last = end.astimezone(zone).replace(tzinfo=None) + timedelta(hours=3)
    while wall <= last:
        day_ok = (
            ((wall.day in doms) or ((wall.weekday() + 1) % 7 in dows))
            if either
            else ((wall.day in doms) and ((wall.weekday() + 1) % 7 in dows))
        )
        if wall.minute in minutes and wall.hour in hours and wall.month in months and day_ok:
            found.add(wall.replace(tzinfo=zone).astimezone(UTC))
            repeat = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
            if hour == "*" and repeat.astimezone(zone).replace(tzinfo=None) == wall:  # not a gap time
                found.add(repeat)
        wall += timedelta(minutes=1)
    return sorted(t for t in found if start <= t <= end)


@settings(max_examples=150, deadline=None)
@given(
    expr=CRON_EXPRS,
    tz=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31)),
)
def test_cron_matches_croniter_away_from_dst(expr: str, tz: str, start: datetime) -> None:
    """croniter is the oracle for the calendar arithmetic; it handles DST its own way (fires gap times at
    the transition, fires a fixed-hour job twice on fall-back), so instants within 3 hours of a transition
    are left to the DST tests."""
    dom, dow = expr.split()[2], expr.split()[4]
    # croniter reads a day-of-week list covering every day ("0-6") as "*"; crontab(5) goes by the '*'
    assume(dow.startswith("*") or {d % 7 for d in vixie_values(dow, 0, 7, DOW_NAMES, 0)} != set(range(7)))
    zone = ZoneInfo(tz)
    start = start.replace(tzinfo=UTC)
    ours = spec(expr, timezone=tz).fire_times(start + timedelta(microseconds=1), FAR, 5)  # strictly after
    assert len(ours) == 5
    it = croniter(expr, start.astimezone(zone), day_or=not (dom.startswith("*") or dow.startswith("*")))
    theirs = [it.get_next(datetime).astimezone(UTC) for _ in range(5)]
    cut = min(ours[-1], theirs[-1])
    assert [t for t in ours if t <= cut and not near_dst(zone, t)] == [
        t for t in theirs if t <= cut and not near_dst(zone, t)
    ]
    assert_well_formed(ours)


@settings(max_examples=150, deadline=None)
@given(
    expr=CRON_EXPRS,
    tz_and_instant=st.sampled_from([(tz, t) for tz, ts in TRANSITIONS.items() for t in ts]),
    offset_min=st.integers(-20 * 60, 4 * 60),
    restart_at=st.floats(0, 1),
)
def test_cron_around_dst_matches_brute_force_and_survives_restarts(
    expr: str, tz_and_instant: tuple[str, datetime], offset_min: int, restart_at: float
) -> None:
    """Near real transitions: the exact documented DST rules, and the same answer whatever the start."""
    tz, instant = tz_and_instant
    start = instant + timedelta(minutes=offset_min, seconds=17)
    end = start + timedelta(days=1)
    schedule = spec(expr, timezone=tz)
    times = schedule.fire_times(start, end, 40)
    assert times == oracle_fire_times(expr, tz, start, end)[:40]
    assert_well_formed(times)
    if times:
        restart = start + (times[-1] - start) * restart_at
        assert schedule.fire_times(restart, times[-1], 40) == [t for t in times if t >= restart]


# --- DST examples -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tz", "instant"), [(tz, t) for tz, ts in TRANSITIONS.items() for t in ts])
def test_transition_table_matches_tzdata(tz: str, instant: datetime) -> None:
    zone = ZoneInfo(tz)
    assert offset(instant - timedelta(microseconds=1), zone) != offset(instant, zone)


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        (
            "America/New_York",
            utc(2026, 3, 7),
            ["03-07 02:30:00-0500", "03-08 03:30:00-0400", "03-09 02:30:00-0400"],
        ),
        (
            "Europe/Berlin",
            utc(2026, 3, 28),
            ["03-28 02:30:00+0100", "03-29 03:30:00+0200", "03-30 02:30:00+0200"],
        ),
    ],
)
def test_spring_forward_gap_fires_once_shifted_by_the_gap(
    tz: str, start: datetime, expected: list[str]
) -> None:
    times = spec("30 2 * * *", timezone=tz).fire_times(start, start + timedelta(days=3), 10)
    assert walls(times, tz) == expected
    assert_well_formed(times)


def test_spring_forward_gap_time_is_found_from_inside_the_gap_hour() -> None:
    daily = spec("30 2 * * *", timezone="America/New_York")
    assert daily.next_at_or_after(utc(2026, 3, 8, 7, 10)) == utc(2026, 3, 8, 7, 30)  # 03:10 -> 03:30 EDT
    assert daily.next_after(utc(2026, 3, 8, 7, 30)) == utc(2026, 3, 9, 6, 30)


def test_spring_forward_every_gap_time_fires_shifted() -> None:
    quarter = spec("*/15 2 * * *", timezone="America/New_York")
    times = quarter.fire_times(utc(2026, 3, 8), utc(2026, 3, 9), 10)
    assert walls(times, "America/New_York") == [f"03-08 03:{m:02}:00-0400" for m in (0, 15, 30, 45)]
    # Lord Howe's gap is 30 minutes (02:00 -> 02:30): 02:00 and 02:20 shift to 02:30 and 02:50.
    every_20 = spec("*/20 * * * *", timezone="Australia/Lord_Howe")
    times = every_20.fire_times(utc(2026, 10, 3, 15, 5), utc(2026, 10, 3, 16), 10)
    assert walls(times, "Australia/Lord_Howe") == [
        "10-04 01:40:00+1030",
        "10-04 02:30:00+1100",
        "10-04 02:40:00+1100",
        "10-04 02:50:00+1100",
        "10-04 03:00:00+1100",
    ]


def test_spring_forward_hourly_schedule_fires_once_per_real_hour() -> None:
    times = spec("30 * * * *", timezone="America/New_York").fire_times(
        utc(2026, 3, 8, 5), utc(2026, 3, 8, 9), 10
    )
    assert times == [utc(2026, 3, 8, h, 30) for h in (5, 6, 7, 8)]
    assert walls(times, "America/New_York") == [
        "03-08 00:30:00-0500",
        "03-08 01:30:00-0500",
        "03-08 03:30:00-0400",
        "03-08 04:30:00-0400",
    ]


@pytest.mark.parametrize(
    ("tz", "expr", "start", "expected"),
    [
        (
            "America/New_York",
            "30 1 * * *",
            utc(2026, 10, 31),
            [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
        ),
        (
            "Europe/Berlin",
            "30 2 * * *",
            utc(2026, 10, 24),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
    ],
)
def test_fall_back_fixed_hour_fires_once_at_first_occurrence(
    tz: str, expr: str, start: datetime, expected: list[datetime]
) -> None:
    times = spec(expr, timezone=tz).fire_times(start, start + timedelta(days=2, hours=12), 10)
    assert times == expected
    assert_well_formed(times)


def test_fall_back_fixed_hour_skips_second_occurrence_when_started_between_them() -> None:
    daily = spec("30 1 * * *", timezone="America/New_York")
    assert daily.next_after(utc(2026, 11, 1, 5, 45)) == utc(2026, 11, 2, 6, 30)  # from 01:45 EDT
    assert daily.next_at_or_after(utc(2026, 11, 1, 6, 10)) == utc(2026, 11, 2, 6, 30)  # from 01:10 EST


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        (
            "America/New_York",
            utc(2026, 11, 1, 4),
            ["00:30:00-0400", "01:30:00-0400", "01:30:00-0500", "02:30:00-0500"],
        ),
        (
            "Europe/Berlin",
            utc(2026, 10, 24, 23),
            ["01:30:00+0200", "02:30:00+0200", "02:30:00+0100", "03:30:00+0100"],
        ),
    ],
)
def test_fall_back_hourly_schedule_fires_every_real_hour(
    tz: str, start: datetime, expected: list[str]
) -> None:
    times = spec("30 * * * *", timezone=tz).fire_times(start, start + timedelta(hours=4), 10)
    assert times == [start + timedelta(minutes=30 + 60 * i) for i in range(4)]
    assert [w[6:] for w in walls(times, tz)] == expected


@pytest.mark.parametrize(
    ("tz", "expr", "previous"),
    [
        ("Europe/Berlin", "0 0 * * *", utc(2026, 3, 28, 23)),  # 00:00 CET on the day of the change
        ("Europe/Berlin", "0 1 * * *", utc(2026, 3, 29, 0)),
        ("America/New_York", "0 0 * * *", utc(2026, 3, 8, 5)),
        ("America/New_York", "15 1 * * *", utc(2026, 3, 8, 6, 15)),
    ],
)
def test_daily_job_before_the_gap_does_not_skip_the_next_day(tz: str, expr: str, previous: datetime) -> None:
    """APScheduler 3 alone jumps from here to the day after next (agronholm/apscheduler#606)."""
    times = spec(expr, timezone=tz).fire_times(previous, previous + timedelta(days=2), 10)
    assert [t - previous for t in times] == [timedelta(0), timedelta(hours=23), timedelta(hours=47)]


# --- interval ---------------------------------------------------------------------------------------------


def test_interval_is_epoch_anchored() -> None:
    quarter = parse_schedule({"interval": "15m"})
    assert quarter.fire_times(utc(2026, 1, 1, 10, 7, 13), FAR, 4) == [
        utc(2026, 1, 1, 10, 15),
        utc(2026, 1, 1, 10, 30),
        utc(2026, 1, 1, 10, 45),
        utc(2026, 1, 1, 11, 0),
    ]
    five = parse_schedule({"interval": "5s"})
    times = five.fire_times(utc(2026, 1, 1, 10, 0, 1, 500_000), FAR, 3)
    assert times == [utc(2026, 1, 1, 10, 0, s) for s in (5, 10, 15)]
    odd = parse_schedule({"interval": "1h30m"}).fire_times(utc(2026, 6, 1), FAR, 5)
    assert all(t.timestamp() % 5400 == 0 for t in odd)


def test_interval_anchor_shifts_the_phase() -> None:
    shifted = parse_schedule({"interval": "15m", "anchor": "2026-01-01T00:05:00+00:00"})
    assert shifted.fire_times(utc(2026, 3, 1, 10, 7), FAR, 3) == [
        utc(2026, 3, 1, 10, 20),
        utc(2026, 3, 1, 10, 35),
        utc(2026, 3, 1, 10, 50),
    ]
    naive = parse_schedule({"interval": "15m", "anchor": "2026-01-01T00:05:00", "timezone": "Europe/Berlin"})
    assert naive.anchor == utc(2025, 12, 31, 23, 5)
    assert naive.fire_times(utc(2026, 3, 1, 10, 7), FAR, 3) == shifted.fire_times(
        utc(2026, 3, 1, 10, 7), FAR, 3
    )


def test_interval_with_sub_second_anchor_finds_the_fire_time_it_starts_on() -> None:
    every_second = parse_schedule({"interval": "1s", "anchor": "2000-01-01T00:00:00.007780+00:00"})
    on_time = utc(2030, 1, 2, us=7780)
    assert every_second.next_at_or_after(on_time) == on_time
    assert every_second.fire_times(on_time, FAR, 2) == [on_time, on_time + timedelta(seconds=1)]


@settings(max_examples=150, deadline=None)
@given(
    seconds=st.integers(1, 3 * 86400),
    anchor=st.none() | st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2030, 1, 1)),
    first=st.datetimes(min_value=datetime(2030, 1, 2), max_value=datetime(2040, 1, 1)),
    later_by=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
)
def test_interval_agrees_across_restarts(
    seconds: int, anchor: datetime | None, first: datetime, later_by: timedelta
) -> None:
    raw: dict[str, Any] = {"interval": f"{seconds}s"}
    if anchor:
        raw["anchor"] = anchor.replace(tzinfo=UTC).isoformat()
    start = first.replace(tzinfo=UTC)
    restart = start + later_by
    before = parse_schedule(raw).fire_times(start, FAR, 10)
    after = parse_schedule(raw).fire_times(restart, FAR, 10)  # a fresh parse: nothing carried over
    assert_well_formed(before)
    assert before[0] >= start and before[0] - start < timedelta(seconds=seconds)
    assert after[0] >= restart and after[0] - restart < timedelta(seconds=seconds)
    origin = anchor.replace(tzinfo=UTC) if anchor else datetime(1970, 1, 1, tzinfo=UTC)
    assert all((t - origin) % timedelta(seconds=seconds) == timedelta(0) for t in before + after)
    overlap = [t for t in before if t >= restart]
    assert after[: len(overlap)] == overlap


@pytest.mark.parametrize("expr", ["500ms", "0s", "0", "0.5"])
def test_interval_below_one_second_is_rejected(expr: str) -> None:
    with pytest.raises(ValueError, match=r"^interval: expected an interval from 1s to 3650d"):
        parse_schedule({"interval": expr})


def test_interval_bad_duration_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^interval: expected a duration"):
        parse_schedule({"interval": "every five minutes"})


# --- at ---------------------------------------------------------------------------------------------------


def test_at_fires_once() -> None:
    once = parse_schedule({"at": "2026-06-01T09:00:00+00:00"})
    at = utc(2026, 6, 1, 9)
    assert once.fire_times(utc(2026, 1, 1), FAR, 100) == [at]
    assert once.next_at_or_after(at) == at
    assert once.next_after(at) is None
    assert once.next_after(utc(2026, 1, 1)) == at


@pytest.mark.parametrize("value", ["2026-06-01T09:00:00", datetime(2026, 6, 1, 9)])
def test_at_naive_time_is_taken_in_the_schedule_timezone(value: str | datetime) -> None:
    once = parse_schedule({"at": value, "timezone": "Europe/Berlin"})
    assert once.fire_times(utc(2026, 1, 1), FAR, 10) == [utc(2026, 6, 1, 7)]


def test_at_in_the_past_yields_nothing_after_it() -> None:
    once = parse_schedule({"at": "2020-01-01T00:00:00+00:00"})
    assert once.next_after(utc(2026, 1, 1)) is None
    assert once.next_at_or_after(utc(2026, 1, 1)) is None
    assert once.fire_times(utc(2026, 1, 1), FAR, 1000) == []
    assert once.fire_times(utc(2019, 1, 1), FAR, 1000) == [utc(2020, 1, 1)]


# --- key --------------------------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "cron": "0 12 * * 1",
    "timezone": "Europe/Berlin",
    "anchor": "2026-01-01T00:00:00+00:00",
    "parameters": {"region": "eu", "full": True},
}


def test_key_is_stable_across_parses() -> None:
    first = parse_schedule(dict(BASE))
    again = parse_schedule({**BASE, "parameters": {"full": True, "region": "eu"}})
    assert first.key == again.key
    assert first.key.startswith("cron-")
    # golden values: a change here re-fires every schedule of every deployment after an upgrade
    assert first.key == "cron-b9067b61a5bdfdbc"
    assert parse_schedule({"interval": "15m"}).key == "interval-22e76be9e1af3c41"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"interval": "90s", "jitter": "30s"}, "interval-84318538d151fe7a"),
        (
            {"rrule": "DTSTART:20260101T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO", "timezone": "Europe/Berlin"},
            "rrule-592e1a3275607369",
        ),
        ({"at": "2026-06-01T09:00:00", "timezone": "America/New_York"}, "at-03e38683f6af013b"),
        (
            {
                "cron": "0 9 * * *",
                "parameters": {"when": "2026-01-01T00:00:00+00:00", "deep": {"l": [1, 2.5]}},
            },
            "cron-aaac34b318a76fbd",
        ),
        ({"interval": "1h", "parameters": {}}, "interval-72993b31f240e52e"),
    ],
)
def test_key_of_a_config_entry_and_of_its_row_is_the_golden_one(raw: dict[str, Any], key: str) -> None:
    """Golden values taken before schedules kept their key in a slot and shared their empty
    parameters: a definition read from the config and one read back from its database row
    (parameters a plain dict) have the key its runs were stored under."""
    spec = parse_schedule(raw)
    row = ScheduleSpec(
        spec.kind, spec.expr, spec.timezone, spec.anchor, spec.active, dict(spec.parameters), spec.jitter
    )
    assert spec.key == row.key == key


@pytest.mark.parametrize(
    "change",
    [
        {"cron": "0 13 * * 1"},
        {"timezone": "America/New_York"},
        {"anchor": "2026-01-01T00:00:01+00:00"},
        {"parameters": {"region": "us", "full": True}},
        {"parameters": {}},
    ],
)
def test_key_changes_with_the_definition(change: dict[str, Any]) -> None:
    assert parse_schedule({**BASE, **change}).key != parse_schedule(dict(BASE)).key


def test_key_ignores_active_and_cron_whitespace() -> None:
    key = parse_schedule(dict(BASE)).key
    assert parse_schedule({**BASE, "active": False}).key == key
    assert parse_schedule({**BASE, "active": True}).key == key
    assert parse_schedule({**BASE, "cron": "  0   12 *\t* 1 "}).key == key


def test_key_differs_between_kinds() -> None:
    keys = {
        parse_schedule({"cron": "*/15 * * * *"}).key,
        parse_schedule({"interval": "15m"}).key,
        parse_schedule({"at": "2026-06-01T09:00:00+00:00"}).key,
    }
    assert len(keys) == 3


# --- parse errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"cron": "* * * *"}, r"^cron: expected 5 fields \(minute hour day month weekday\) or 6"),
        ({"cron": "* * * * * * *"}, r"^cron: expected 5 fields .* got 7"),
        ({"cron": "0 0 * * 8"}, r"^cron: bad day-of-week '8'"),
        ({"cron": "0 0 * * funday"}, r"^cron: bad day-of-week 'funday'"),
        ({"cron": "0 0 * * 5-1"}, r"^cron: day-of-week range '5-1' runs backwards"),
        ({"cron": "0 0 * * */0"}, r"^cron: bad step in day-of-week"),
        ({"cron": "61 * * * *"}, r"^cron: "),
        ({"cron": 5}, r"^cron: expected a string"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, r"^timezone: unknown time zone 'Mars/Olympus'"),
        ({"cron": "* * * * *", "timezone": 1}, r"^timezone: expected an IANA time zone name"),
        (
            {"cron": "* * * * *", "interval": "5m"},
            r"expected exactly one of 'cron', 'interval', 'rrule' or 'at'",
        ),
        ({"timezone": "UTC"}, r"expected exactly one of 'cron', 'interval', 'rrule' or 'at'"),
        ({}, r"expected exactly one of 'cron', 'interval', 'rrule' or 'at'"),
        ({"cron": "* * * * *", "tz": "UTC"}, r"^tz: unknown schedule key \(expected one of active, anchor"),
        ({"rrule": "FREQ=DAILY"}, r"^rrule: needs a DTSTART"),
        ({"rrule": "FREQ=DAILY;BYHOUR=x", "anchor": "2026-01-01T00:00:00"}, r"^rrule: not an RFC 5545 rule"),
        # rules dateutil finds empty only when it walks them: every 9th second from second 2 of the
        # day (2 mod 9) reaches no 5th second of minute 0 or 30 (both 5 mod 9); every 120th minute
        # from midnight reaches only even hours
        (
            {"rrule": "DTSTART:20260101T000002\nRRULE:FREQ=SECONDLY;INTERVAL=9;BYMINUTE=0,30;BYSECOND=5"},
            r"^rrule: matches no time: Invalid combination of interval, byhour and byminute",
        ),
        (
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=MINUTELY;INTERVAL=120;BYHOUR=3"},
            r"^rrule: matches no time: Invalid combination of interval and byhour",
        ),
        (
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=MINUTELY;INTERVAL=120;BYHOUR=3;COUNT=5"},
            r"^rrule: matches no time: Invalid combination of interval and byhour",
        ),
        # what dateutil builds but cannot walk (a traceback, or a walk of every second for a century)
        (
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=DAILY;INTERVAL=0"},
            r"^rrule: expected INTERVAL of at least 1, got 0",
        ),
        (
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=DAILY;COUNT=0"},
            r"^rrule: expected COUNT of at least 1, got 0",
        ),
        pytest.param(  # dateutil itself only warns (deprecated, to be an error)
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=DAILY;COUNT=2;UNTIL=20270101T000000"},
            r"^rrule: expected COUNT or UNTIL, not both",
            marks=pytest.mark.filterwarnings("ignore:Using both 'count' and 'until':DeprecationWarning"),
        ),
        (
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=MINUTELY;BYHOUR=25"},
            r"^rrule: expected BYHOUR from 0 to 23, got 25",
        ),
        (
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=HOURLY;BYSECOND=60"},
            r"^rrule: expected BYSECOND from 0 to 59, got 60",
        ),
        (
            {"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=SECONDLY;BYSETPOS=2"},
            r"^rrule: BYSETPOS needs FREQ=DAILY or longer",
        ),
        ({"interval": "5m", "jitter": "soon"}, r"^jitter: expected a duration"),
        ({"interval": "5m", "anchor": "yesterday"}, r"^anchor: expected an ISO 8601 date-time"),
        ({"interval": "5m", "anchor": 5}, r"^anchor: expected a date-time, got 5"),
        ({"at": "soon"}, r"^at: expected an ISO 8601 date-time"),
        ({"cron": "* * * * *", "active": "yes"}, r"^active: expected true or false"),
        ({"cron": "* * * * *", "parameters": ["a"]}, r"^parameters: expected a table"),
    ],
)
def test_parse_errors_are_clear_value_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(raw)


def test_parse_defaults() -> None:
    parsed = parse_schedule({"cron": "0 12 * * 1"})
    assert (parsed.kind, parsed.timezone, parsed.anchor, parsed.active, parsed.parameters) == (
        "cron",
        "UTC",
        None,
        True,
        {},
    )


# --- windows ----------------------------------------------------------------------------------------------


def test_fire_times_respects_both_bounds_and_the_limit() -> None:
    minutely = spec("* * * * *")
    start, end = utc(2026, 1, 1, 10, 1), utc(2026, 1, 1, 10, 5)
    assert minutely.fire_times(start, end, 100) == [utc(2026, 1, 1, 10, m) for m in range(1, 6)]
    assert minutely.fire_times(start, end, 3) == [utc(2026, 1, 1, 10, m) for m in range(1, 4)]
    assert minutely.fire_times(start, end, 0) == []
    assert minutely.fire_times(start + timedelta(microseconds=1), end - timedelta(microseconds=1), 100) == [
        utc(2026, 1, 1, 10, m) for m in range(2, 5)
    ]
    assert minutely.fire_times(end, start, 100) == []


def test_next_after_is_strictly_after() -> None:
    minutely = spec("* * * * *")
    t = utc(2026, 1, 1, 10, 1)
    assert minutely.next_after(t) == utc(2026, 1, 1, 10, 2)
    assert minutely.next_at_or_after(t) == t
    assert minutely.next_after(t - timedelta(microseconds=1)) == t


def test_times_in_other_zones_are_accepted_and_utc_is_returned() -> None:
    berlin = datetime(2026, 1, 1, 11, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    nxt = spec("* * * * *").next_after(berlin)
    assert nxt == utc(2026, 1, 1, 10, 1)
    assert nxt is not None and nxt.tzinfo is UTC


# --- rrule and jitter ----------------------------------------------------------------------------


def test_rrule_weekly_on_the_wall_clock_across_dst() -> None:
    spec = parse_schedule(
        {"rrule": "DTSTART:20260101T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE", "timezone": "Europe/Berlin"}
    )
    times = spec.fire_times(datetime(2026, 3, 20, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC), 10)
    assert times == [
        datetime(2026, 3, 23, 8, tzinfo=UTC),  # 09:00 CET
        datetime(2026, 3, 25, 8, tzinfo=UTC),
        datetime(2026, 3, 30, 7, tzinfo=UTC),  # 09:00 CEST
        datetime(2026, 4, 1, 7, tzinfo=UTC),
    ]


def test_rrule_takes_its_dtstart_from_the_anchor_and_is_stable() -> None:
    raw = {
        "rrule": "FREQ=DAILY;BYHOUR=6;BYMINUTE=15",
        "anchor": "2026-01-01T00:00:00",
        "timezone": "Asia/Kolkata",
    }
    spec = parse_schedule(raw)
    first = spec.next_at_or_after(datetime(2026, 5, 1, tzinfo=UTC))
    assert first == datetime(2026, 5, 1, 0, 45, tzinfo=UTC)  # 06:15 IST
    assert spec.next_after(first) == first + timedelta(days=1)
    assert parse_schedule(raw).key == spec.key


def test_rrule_with_count_ends() -> None:
    spec = parse_schedule({"rrule": "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY;COUNT=2"})
    assert spec.fire_times(datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC), 10) == [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
    ]
    assert spec.next_after(datetime(2026, 1, 2, tzinfo=UTC)) is None


def test_jitter_is_deterministic_bounded_and_keyed() -> None:
    plain = parse_schedule({"interval": "1m"})
    jittery = parse_schedule({"interval": "1m", "jitter": "30s"})
    assert plain.delay(datetime(2026, 1, 1, tzinfo=UTC)) == timedelta(0)
    delays = [jittery.delay(datetime(2026, 1, 1, 0, m, tzinfo=UTC)) for m in range(60)]
    assert all(timedelta(0) <= d < timedelta(seconds=30) for d in delays)
    assert len(set(delays)) > 50
    assert delays == [
        parse_schedule({"interval": "1m", "jitter": "30s"}).delay(datetime(2026, 1, 1, 0, m, tzinfo=UTC))
        for m in range(60)
    ]
    assert jittery.key != plain.key
    assert plain.key == parse_schedule({"interval": "1m", "jitter": 0}).key  # unset or 0: the same schedule

"""Fire-time computation: pure functions of a schedule definition and a time window.

Nothing here reads the clock or the database, so every rule can be tested (and property-tested)
on its own.  APScheduler 3 triggers do the calendar arithmetic; this module only adds what
orchd's semantics need on top of them:

* ``cron`` means Vixie cron as in crontab(5): numeric day-of-week 0 and 7 are Sunday (APScheduler
  counts from Monday), and when both day-of-month and day-of-week are restricted a time fires when
  *either* matches (APScheduler requires both), so such a schedule is the union of two triggers.
  An optional sixth field in front is seconds.
* DST: a wall-clock time inside a spring-forward gap fires once, shifted forward by the gap
  (02:30 -> 03:30).  In a fall-back repeat, a schedule with a fixed hour fires once (the first
  occurrence, as cron does); one whose hour field is ``*`` fires every real hour.
* ``interval`` schedules are anchored at the Unix epoch unless ``anchor`` is given, so two
  schedulers (or one restarted) always compute the same fire times: "15m" fires at :00, :15, ...
* All times handed in and out are timezone-aware UTC; triggers are always given aware UTC ``now``.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import itertools
import json
import math
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from types import SimpleNamespace
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from dateutil.rrule import HOURLY, MINUTELY, SECONDLY, rrule, rrulestr

from orchd.durations import format_duration, parse_duration
from orchd.limits import check_year, json_safe

Kind = Literal["cron", "interval", "rrule", "at"]
KINDS: tuple[Kind, ...] = ("cron", "interval", "rrule", "at")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The smallest step of time orchd stores (a microsecond): "just after" a fire time.
TICK = timedelta(microseconds=1)
_DAY = timedelta(days=1)
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: The ranges of a schedule's durations (README, "Schedules").
MIN_INTERVAL, MAX_INTERVAL = 1.0, 3650 * 86400.0
MAX_JITTER = 7 * 86400.0


#: The parameters of a schedule that has none: one object shared by all of them.
NO_PARAMETERS: Mapping[str, Any] = types.MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """One entry of a deployment's ``schedules`` list, validated.

    A config may hold 100,000 of these for the life of the scheduler, so each keeps its fields
    only (slots, no ``__dict__``); what computing fire times needs (time zone, triggers, rule) is
    built on demand into a bounded cache shared by equal definitions (``_calendar``), not kept
    on each one.
    """

    kind: Kind
    expr: str
    timezone: str = "UTC"
    anchor: datetime | None = None
    active: bool = True
    parameters: Mapping[str, Any] = field(default_factory=lambda: NO_PARAMETERS)
    #: Seconds; each run is due up to this much after its nominal time (spreads load).
    jitter: float = 0.0

    @property
    def key(self) -> str:
        """A stable identity of the definition (never a row id), part of each run's unique key.

        ``active`` is left out on purpose: pausing and resuming a schedule must not re-fire it.
        Optional settings enter only when set, so adding one never re-keys existing schedules.
        Computed when asked (a few microseconds), not kept: 8 MB for 100,000 schedules.
        """
        identity: dict[str, Any] = {
            "kind": self.kind,
            "expr": " ".join(self.expr.split()) if self.kind == "cron" else self.expr,
            "tz": self.timezone,
            "anchor": self.anchor.isoformat() if self.anchor else None,
            "params": dict(self.parameters),
        }
        if self.jitter:
            identity["jitter"] = self.jitter
        body = json.dumps(identity, sort_keys=True, default=str)
        return f"{self.kind}-{hashlib.sha256(body.encode()).hexdigest()[:16]}"

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone (ZoneInfo keeps one object per name)."""
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        tz = f" ({self.timezone})" if self.kind == "cron" and self.timezone != "UTC" else ""
        return f"{self.kind} {self.expr}{tz}"

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware), or None when the schedule is over."""
        return self.next_at_or_after(after.astimezone(UTC) + TICK)

    def next_at_or_after(self, start: datetime, end: datetime | None = None) -> datetime | None:
        """The first fire time at or after ``start``, or None when the schedule is over.  With
        ``end``, a fire time after it may be reported as None (a bound on the search, not more)."""
        return _calendar(self.kind, self.expr, self.timezone, self.anchor).next_at_or_after(start, end)

    def delay(self, fire_time: datetime) -> timedelta:
        """The jitter of one fire time: a fixed fraction of ``jitter`` derived from the schedule and
        the time, so every scheduler (and every retry of a tick) gives the same due time."""
        if not self.jitter:
            return timedelta(0)
        digest = hashlib.sha256(f"{self.key}/{fire_time.isoformat()}".encode()).digest()
        return timedelta(seconds=self.jitter * int.from_bytes(digest[:4], "big") / 2**32)

    def fire_times(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Fire times in ``[start, end]`` (UTC, ascending), at most ``limit`` of them."""
        return list(_take(self._iter_from(start, end), end, limit))

    def last_fire_times(self, start: datetime, end: datetime, count: int) -> list[datetime]:
        """The last ``count`` fire times in ``[start, end)``, ascending.

        Found by bisecting on the window's start, so at most about ``count * 45`` fire times are
        computed however long the window is: walking it would take minutes for a scheduler that
        was down for a month next to a schedule firing every second.
        """
        last = end - TICK
        found = self.fire_times(start, last, count + 1)
        if len(found) <= count:
            return found
        lo, hi = start, end  # more than ``count`` fire times in [lo, end), at most ``count`` in [hi, end)
        while hi - lo > TICK:
            mid = lo + (hi - lo) / 2
            if len(self.fire_times(mid, last, count + 1)) > count:
                lo = mid
            else:
                hi = mid
        return self.fire_times(hi, last, count)

    def _iter_from(self, start: datetime, end: datetime | None = None) -> Iterator[datetime]:
        nxt = self.next_at_or_after(start, end)
        while nxt is not None and (end is None or nxt <= end):
            yield nxt
            nxt = self.next_at_or_after(nxt + TICK, end)


#: How many definitions' calendars are kept (``_calendar``): a tick plans each due schedule once,
#: from start to end, so a small cache serves it; a config with 100,000 schedules keeps no more.
CALENDARS = 1024


class _Calendar:
    """What computing the fire times of one definition needs, built once: its zone, the step of an
    interval, the rule of an rrule, the triggers of an ``at``, the triggers of a cron for each UTC
    offset it was read on."""

    __slots__ = (
        "_by_offset",
        "_cron",
        "_drops_repeated_hour",
        "_naive",
        "_rule",
        "_step",
        "_triggers",
        "anchor",
        "kind",
        "zone",
    )

    def __init__(self, kind: Kind, expr: str, timezone_name: str, anchor: datetime | None) -> None:
        self.kind, self.anchor, self.zone = kind, anchor, ZoneInfo(timezone_name)
        if kind == "interval":
            self._step = _interval_step(expr)
        elif kind == "at":
            self._triggers = _build_triggers(kind, expr, UTC)
        elif kind == "rrule":
            self._rule, self._naive = _build_rrule(expr, self.zone, anchor)
        else:
            self._cron = expr
            self._by_offset: dict[timedelta, tuple[BaseTrigger, ...]] = {}
            self._drops_repeated_hour = _cron_fields(expr)["hour"] != "*"

    def next_at_or_after(self, start: datetime, end: datetime | None = None) -> datetime | None:
        """The first fire time at or after ``start``, or None when the schedule is over.  With
        ``end``, a fire time after it may be reported as None (a bound on the search, not more)."""
        start = start.astimezone(UTC)
        if self.kind == "interval":
            # exact arithmetic: APScheduler's float timestamps can miss the fire time ``start`` is on
            origin, step = self.anchor or EPOCH, self._step
            return origin if start <= origin else origin - ((origin - start) // step) * step
        if self.kind == "at":
            return _first(self._triggers, start)
        if self.kind == "rrule":
            rule, naive = self._rule, self._naive

            def wall(t: datetime) -> datetime:  # as the rule reads times
                local = t.astimezone(self.zone)
                return local.replace(tzinfo=None) if naive else local

            probe = wall(start)
            until: datetime | None = rule._until  # type: ignore[attr-defined]
            if until is not None and until < probe:
                return None  # over (a COUNT rule whose last occurrence is past)
            found = _bounded(rule, probe, None if end is None else wall(end)).after(probe, inc=True)
            if found is None:
                return None
            return (found.replace(tzinfo=self.zone) if naive else found).astimezone(UTC)
        while True:
            best = self._next_cron(start)
            if best is not None and self._drops_repeated_hour and best.astimezone(self.zone).fold == 1:
                start = best + TICK
                continue
            return best

    def _next_cron(self, start: datetime) -> datetime | None:
        """Match the fields on the wall clock of one UTC offset at a time.

        APScheduler 3 is exact in a fixed offset but steps wrongly across a DST change in a zone (a daily
        00:00 job skips the day after a spring-forward, agronholm/apscheduler#606, and only the first
        time inside the gap is found).  Reading a wall time of the gap on the clock from before the gap
        shifts it forward by the gap, as documented.
        """
        found: list[datetime] = []
        offset = _offset(start, self.zone)
        before = _offset(start - _DAY, self.zone)
        if before < offset:  # inside or just after a spring-forward gap: its times, if any are left
            change = _offset_change(self.zone, start - _DAY, start)
            gap_time = _first(self._triggers_at(before), start)
            if change is not None and gap_time is not None and gap_time < change + (offset - before):
                found.append(gap_time)
        while True:
            nxt = _first(self._triggers_at(offset), start)
            if nxt is None or (found and nxt >= min(found)):
                return min(found, default=None)
            change = _offset_change(self.zone, start, nxt)
            if change is None:
                return nxt
            after = _offset(change, self.zone)
            if after > offset and nxt < change + (after - offset):
                found.append(nxt)  # a wall time inside the gap; the clock after it may still fire first
            start, offset = change, after

    def _triggers_at(self, offset: timedelta) -> tuple[BaseTrigger, ...]:
        if offset not in self._by_offset:
            self._by_offset[offset] = _build_triggers("cron", self._cron, timezone(offset))
        return self._by_offset[offset]


@functools.lru_cache(maxsize=CALENDARS)
def _calendar(kind: Kind, expr: str, timezone_name: str, anchor: datetime | None) -> _Calendar:
    return _Calendar(kind, expr, timezone_name, anchor)


def never_fires(spec: ScheduleSpec, now: datetime) -> str | None:
    """Why an active schedule will not fire again after ``now``, or None when it will.

    Such a schedule validates (it is well-formed) yet does nothing: an ``at`` in the past, an
    rrule whose occurrences are used up, a cron date that does not exist (``0 0 30 2 *``).  An
    impossible cron costs a search up to the year 9999 (about half a second), so this is asked by
    `config validate` and `schedule preview`, never on every load.
    """
    if not spec.active or spec.next_at_or_after(now) is not None:
        return None
    if spec.kind == "at":
        return "never fires: its time is past"
    if spec.kind == "rrule":
        return "never fires: the rule has no occurrence left"
    return "never fires: no date matches it"


def _first(triggers: tuple[BaseTrigger, ...], start: datetime) -> datetime | None:
    candidates = [t.get_next_fire_time(None, start) for t in triggers]
    return min((c.astimezone(UTC) for c in candidates if c is not None and c >= start), default=None)


def _offset(t: datetime, zone: ZoneInfo) -> timedelta:
    return t.astimezone(zone).utcoffset() or timedelta(0)


def _offset_change(zone: ZoneInfo, start: datetime, end: datetime) -> datetime | None:
    """The first instant in ``(start, end]`` at which the zone's UTC offset differs from the one at start."""
    offset = _offset(start, zone)
    lo = start
    while lo < end:
        hi = min(lo + _DAY, end)
        if _offset(hi, zone) != offset:
            while hi - lo > TICK:
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if _offset(mid, zone) == offset else (lo, mid)
            return hi
        lo = hi
    return None


def _take(times: Iterator[datetime], end: datetime, limit: int) -> Iterator[datetime]:
    for count, t in enumerate(times):
        if count >= limit or t > end:
            return
        yield t


def parse_schedule(raw: Mapping[str, Any]) -> ScheduleSpec:
    """Validate one ``schedules`` entry; raise ValueError("key: problem") on bad input."""
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise ValueError("expected exactly one of 'cron', 'interval', 'rrule' or 'at' in each schedule")
    kind = kinds[0]
    expr = raw[kind]
    allowed = {kind, "timezone", "anchor", "active", "parameters", "jitter"}
    for key in raw:
        if key not in allowed:
            raise ValueError(f"{key}: unknown schedule key (expected one of {', '.join(sorted(allowed))})")
    timezone = raw.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise ValueError(f"timezone: expected an IANA time zone name, got {timezone!r}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f'timezone: unknown time zone {timezone!r} (expected an IANA name like "Europe/Berlin")'
        ) from None
    active = raw.get("active", True)
    if not isinstance(active, bool):
        raise ValueError(f"active: expected true or false, got {active!r}")
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ValueError(f"parameters: expected a table, got {parameters!r}")
    parameters = json_safe(parameters, "parameters") if parameters else NO_PARAMETERS
    anchor = _parse_time(raw["anchor"], timezone, "anchor") if "anchor" in raw else None
    if kind == "at":
        expr = _parse_time(expr, timezone, "at").isoformat()
    elif not isinstance(expr, str):
        raise ValueError(f"{kind}: expected a string, got {expr!r}")
    try:
        jitter = parse_duration(raw["jitter"]) if "jitter" in raw else 0.0
    except ValueError as exc:
        raise ValueError(f"jitter: {exc}") from None
    if jitter > MAX_JITTER:
        raise ValueError(
            f"jitter: expected a duration from 0s to {format_duration(MAX_JITTER)}, got {raw['jitter']!r}"
        )
    try:
        # validate without keeping anything built: a config of 100,000 schedules must stay small
        if kind == "interval":
            _interval_step(expr)
        elif kind == "rrule":
            _build_rrule(expr, ZoneInfo(timezone), anchor)
        else:
            _build_triggers(kind, expr, ZoneInfo(timezone))
    except ValueError as exc:
        raise ValueError(f"{kind}: {exc}") from None
    # equal strings of thousands of schedules ("1h", "Europe/Berlin") are kept once
    return ScheduleSpec(kind, sys.intern(expr), sys.intern(timezone), anchor, active, parameters, jitter)


def _parse_time(value: object, timezone: str, key: str) -> datetime:
    """A TOML datetime or ISO string; a naive one is taken in the schedule's time zone."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{key}: expected an ISO 8601 date-time like 2026-12-01T09:00:00, got {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise ValueError(f"{key}: expected a date-time, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(timezone))
    return check_year(value, key).astimezone(UTC)


def _build_rrule(text: str, zone: ZoneInfo, anchor: datetime | None) -> tuple[rrule, bool]:
    """One RFC 5545 RRULE, iterated on the schedule's wall clock; also whether it is naive (a
    DTSTART without zone, read in the schedule's).  Its DTSTART (in the text, or ``anchor``) is
    required: without one dateutil would start from "now", and fire times would differ between
    schedulers and restarts."""
    if "DTSTART" not in text.upper() and anchor is None:
        raise ValueError(
            "needs a DTSTART (in the rule or as anchor) so every scheduler computes the same times"
        )
    try:
        rule = rrulestr(text, dtstart=anchor.astimezone(zone) if anchor else None, forceset=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an RFC 5545 rule: {exc}") from None
    if not isinstance(rule, rrule):
        raise ValueError("expected a single RRULE (with an optional DTSTART line)")
    dtstart: datetime = check_year(rule._dtstart, "DTSTART")  # type: ignore[attr-defined]  # not in stubs
    _check_parts(rule)
    count: int | None = rule._count  # type: ignore[attr-defined]
    # dateutil finds some MINUTELY and SECONDLY rules empty only when it walks them
    # (MINUTELY;INTERVAL=120;BYHOUR=3 from midnight reaches even hours only): walked here, such a
    # rule is refused with the config instead of failing every command and tick that asks for its
    # next time
    try:
        if count:
            # the same rule ending at its last occurrence: it can then be iterated from any point
            uncounted = rule.replace(count=None)
            occurrences = list(itertools.islice(_bounded(uncounted, dtstart, None), count))
            rule = uncounted.replace(until=occurrences[-1] if occurrences else dtstart - TICK)
        elif rule._freq in (MINUTELY, SECONDLY):  # type: ignore[attr-defined]
            next(iter(_bounded(rule, dtstart, dtstart + _DAY)), None)  # a day shows it
    except ValueError as exc:
        raise ValueError(f"matches no time: {exc}") from None
    return rule, dtstart.tzinfo is None


def _check_parts(rule: rrule) -> None:
    """Refuse what dateutil builds but cannot iterate: INTERVAL=0 divides by zero, BYHOUR=25 or
    BYSECOND=60 fail on the first walk, a COUNT is read as the rule ending at its last
    occurrence (so with an UNTIL, which dateutil deprecates, or with none at COUNT=0, it would be
    a rule with both), and BYSETPOS under a sub-daily FREQ picks from periods of an hour or less,
    one at a time, with no skipping of days: a position no period has (FREQ=SECONDLY;BYSETPOS=2)
    walks every second for a century."""
    parts = vars(rule)
    if parts["_interval"] < 1:
        raise ValueError(f"expected INTERVAL of at least 1, got {parts['_interval']}")
    count = parts["_count"]
    if count is not None:
        if parts["_until"] is not None:
            raise ValueError("expected COUNT or UNTIL, not both (RFC 5545)")
        if count < 1:
            raise ValueError(f"expected COUNT of at least 1, got {count}")
        if count > MAX_COUNT:
            raise ValueError(
                f"expected COUNT of at most {MAX_COUNT} (use UNTIL for a longer rule), got {count}"
            )
    for name, top in (("hour", 23), ("minute", 59), ("second", 59)):
        wrong = sorted(v for v in parts[f"_by{name}"] or () if not 0 <= v <= top)
        if wrong:
            raise ValueError(f"expected BY{name.upper()} from 0 to {top}, got {wrong[0]}")
    if parts["_bysetpos"] and parts["_freq"] in (HOURLY, MINUTELY, SECONDLY):
        raise ValueError("BYSETPOS needs FREQ=DAILY or longer (a set of positions within each day or more)")


#: How far ahead an rrule is searched for its next fire time (a rule with none in that time is
#: over); and the longest COUNT, whose occurrences are counted from DTSTART once.
RRULE_LOOKAHEAD_YEARS = 100
MAX_COUNT = 10_000
#: The length of an rrule's period on the wall clock, for the frequencies whose periods are all
#: alike (dateutil: YEARLY 0, MONTHLY 1, WEEKLY 2, DAILY 3, HOURLY 4, MINUTELY 5, SECONDLY 6).
_FIXED_PERIODS = {
    2: timedelta(weeks=1),
    3: _DAY,
    4: timedelta(hours=1),
    5: timedelta(minutes=1),
    6: timedelta(seconds=1),
}


def _bounded(rule: rrule, probe: datetime, end: datetime | None) -> rrule:
    """``rule`` with its DTSTART moved forward by whole periods to just before ``probe`` and an end
    at most RRULE_LOOKAHEAD_YEARS after it (or at ``end``; both read as the rule reads times), so
    that finding the next fire time costs a couple of periods, not every occurrence since DTSTART
    (a SECONDLY rule from a year ago: 30 million) nor every day until the year 9999 (a rule that
    never matches).

    Moving DTSTART by whole periods keeps every occurrence after it: dateutil builds each period
    from the rule and the calendar alone, and what it takes from DTSTART when the rule is silent
    (the time of day, the weekday, the day of the month) is the same after the move.  MONTHLY and
    YEARLY periods differ in length: DTSTART moves by whole years only, to a year where its date
    exists (29 February)."""
    start: datetime = rule._dtstart  # type: ignore[attr-defined]
    freq, interval = rule._freq, rule._interval  # type: ignore[attr-defined]
    wall = probe.astimezone(start.tzinfo) if start.tzinfo is not None else probe
    moved = start
    if freq in _FIXED_PERIODS:
        period = _FIXED_PERIODS[freq] * interval
        periods = (wall.replace(tzinfo=None) - start.replace(tzinfo=None)) // period - 1
        if periods > 0:
            moved = _wall_add(start, periods * period)
    else:
        months = 12 * interval // math.gcd(12, interval) if freq == 1 else 12 * interval
        years = (wall.year - start.year) // (months // 12) * (months // 12) - months // 12
        while years > 0 and not _has_date(start.year + years, start.month, start.day):
            years -= months // 12
        if years > 0:
            moved = start.replace(year=start.year + years)
    lookahead = timedelta(days=365.25 * RRULE_LOOKAHEAD_YEARS)
    latest = datetime.max.replace(tzinfo=wall.tzinfo) - _DAY
    cap = wall + lookahead if latest - wall > lookahead else latest
    if end is not None:
        cap = min(cap, end.astimezone(start.tzinfo) if start.tzinfo is not None else end)
    until: datetime | None = rule._until  # type: ignore[attr-defined]
    bounded = rule.replace(dtstart=moved, until=cap if until is None else min(until, cap))
    # dateutil checks UNTIL only against the occurrences it finds: one that finds none walks every
    # day to the year 9999 (20 s for a SECONDLY rule of 30 February).  Its own walk, stopping after
    # the year of the cap instead:
    if (walk := _walk_until(cap.year)) is not None:
        bounded._iter = types.MethodType(walk, bounded)  # type: ignore[attr-defined]
    return bounded


@functools.lru_cache(maxsize=16)
def _walk_until(last_year: int) -> Callable[[rrule], Iterator[datetime]] | None:
    """dateutil's ``rrule._iter`` (the walk through periods that every ``after`` runs) with the
    year it gives up after set to ``last_year`` instead of ``datetime.MAXYEAR``: the same code
    with another ``datetime`` in its globals.  None if a dateutil release no longer reads it so
    (a test fails then: the walk is unbounded again)."""
    walk = rrule._iter  # type: ignore[attr-defined]
    code = walk.__code__
    if "MAXYEAR" not in code.co_names or walk.__closure__ or "datetime" not in walk.__globals__:
        return None
    names = dict(walk.__globals__)
    names["datetime"] = SimpleNamespace(date=date, datetime=datetime, MAXYEAR=last_year)
    return types.FunctionType(code, names, code.co_name, walk.__defaults__)


def _wall_add(value: datetime, delta: timedelta) -> datetime:
    """``value`` moved by ``delta`` on its own wall clock (as dateutil steps an aware rule)."""
    return (value.replace(tzinfo=None) + delta).replace(tzinfo=value.tzinfo)


def _has_date(year: int, month: int, day: int) -> bool:
    return 1 <= year <= 9999 and day <= calendar.monthrange(year, month)[1]


def _interval_step(expr: str) -> timedelta:
    seconds = parse_duration(expr)
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise ValueError(
            f"expected an interval from {format_duration(MIN_INTERVAL)} to "
            f"{format_duration(MAX_INTERVAL)}, got {expr!r}"
        )
    return timedelta(seconds=seconds)


def _build_triggers(kind: Kind, expr: str, zone: tzinfo) -> tuple[BaseTrigger, ...]:
    """The APScheduler triggers of an ``at`` or a ``cron`` (an interval is plain arithmetic)."""
    if kind == "at":
        return (DateTrigger(run_date=datetime.fromisoformat(expr), timezone=UTC),)
    fields = _cron_fields(expr)
    # crontab(5): a field "starting with *" (also "*/2") is unrestricted for the OR rule below.
    dom_star = fields["day"].startswith("*")
    dow_star = fields["day_of_week"].startswith("*")
    fields["day_of_week"] = _vixie_dow(fields["day_of_week"])
    if dom_star or dow_star:
        return (CronTrigger(timezone=zone, **fields),)
    # Vixie cron: both restricted means "either matches": the union of two triggers.
    return (
        CronTrigger(timezone=zone, **{**fields, "day_of_week": "*"}),
        CronTrigger(timezone=zone, **{**fields, "day": "*"}),
    )


def _cron_fields(expr: str) -> dict[str, str]:
    parts = expr.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise ValueError(
            f"expected 5 fields (minute hour day month weekday) or 6 (second first), "
            f"got {len(parts)} in {expr!r}"
        )
    names = ("second", "minute", "hour", "day", "month", "day_of_week")
    return dict(zip(names, parts, strict=True))


def _vixie_dow(field_text: str) -> str:
    """Translate a crontab(5) day-of-week field (0/7 = Sunday) to APScheduler's names."""
    if field_text == "*":
        return "*"
    days: set[int] = set()
    for item in field_text.lower().split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in day-of-week {item!r}")
        if base == "*":
            lo, hi = 0, 6
        elif "-" in base:
            a, b = base.split("-", 1)
            lo, hi = _dow_value(a), _dow_value(b)
            if hi == 0 and b.strip() == "7" and a.strip() != "7":
                hi = 7
        else:
            lo = hi = _dow_value(base)
            if step:
                hi = 6
        if lo > hi:
            raise ValueError(f"day-of-week range {item!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step or 1))
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def _dow_value(text: str) -> int:
    text = text.strip()
    if text in _DOW_NAMES:
        return _DOW_NAMES.index(text)
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7 if int(text) != 7 else 0
    raise ValueError(f"bad day-of-week {text!r} (expected 0-7 or sun-sat)")

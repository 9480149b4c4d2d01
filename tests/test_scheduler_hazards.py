"""No schedule, however it is written, may hang the scheduler, and no config, however the database
takes it, may end it: fire times are computed from the window at hand (never walked from an old
DTSTART or an old cursor), a schedule that cannot be computed is skipped alone, a reload the
database refuses keeps the running config, and SIGTERM is answered within a second or two."""

from __future__ import annotations

import dataclasses
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dateutil.rrule import rrulestr
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select, text, update
from structlog.testing import capture_logs

from orchd.db.schema import deployments, runs, schedules
from orchd.db.store import Store
from orchd.errors import ConfigError
from orchd.models import DueSchedule
from orchd.scheduler.daemon import Scheduler
from orchd.scheduler.plan import plan
from orchd.schedules import RRULE_LOOKAHEAD_YEARS, ScheduleSpec, _bounded, parse_schedule
from tests.cli_support import Orchd
from tests.conftest import MakeConfig
from tests.helpers import daemons, wait_for, write_config

NOW = datetime(2026, 12, 4, 15, 0, 7, tzinfo=UTC)
#: The issue's rule: every 10 s since 2020.  Walked from DTSTART it took 17 s per fire time.
OLD_SECONDLY = "DTSTART:20200101T000000\\nRRULE:FREQ=SECONDLY;INTERVAL=10"
#: Matches no day at all: dateutil walked every day to the year 9999 (20 s) to find that out.
NEVER = "DTSTART:20260101T000000\\nRRULE:FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30"


# ---------------------------------------------------------------- fire times from the window


@pytest.mark.timeout(30)
def test_an_rrule_with_an_old_dtstart_is_computed_from_the_window() -> None:
    spec = parse_schedule({"rrule": OLD_SECONDLY.replace("\\n", "\n")})
    times = spec.fire_times(NOW, NOW + timedelta(hours=1), 100)
    assert times[0] == NOW.replace(second=10)
    assert times == [times[0] + timedelta(seconds=10 * i) for i in range(100)]
    assert spec.next_after(NOW) == NOW.replace(second=10)


@pytest.mark.timeout(30)
def test_a_rule_that_never_fires_is_given_up_within_the_lookahead() -> None:
    spec = parse_schedule({"rrule": NEVER.replace("\\n", "\n")})
    assert spec.next_at_or_after(NOW) is None
    assert spec.fire_times(NOW, NOW + timedelta(days=3650), 10) == []
    # the walk itself stops at the lookahead: a rule that fires yearly yields nothing past it
    yearly = rrulestr("DTSTART:20000101T000000\nRRULE:FREQ=YEARLY")
    probe = NOW.replace(tzinfo=None)
    assert max(_bounded(yearly, probe, None)).year <= probe.year + RRULE_LOOKAHEAD_YEARS + 1


def test_a_count_rule_is_read_as_the_rule_ending_at_its_last_occurrence() -> None:
    spec = parse_schedule({"rrule": "DTSTART:20200101T000000\nRRULE:FREQ=MINUTELY;COUNT=3"})
    start = datetime(2019, 1, 1, tzinfo=UTC)
    assert spec.fire_times(start, NOW, 10) == [datetime(2020, 1, 1, 0, m, tzinfo=UTC) for m in range(3)]
    assert spec.next_at_or_after(NOW) is None
    with pytest.raises(ValueError, match="COUNT of at most 10000"):
        parse_schedule({"rrule": "DTSTART:20200101T000000\nRRULE:FREQ=SECONDLY;COUNT=20000"})


_FREQS = ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY"]
_EXTRAS = [
    "",
    ";BYDAY=MO,FR",
    ";BYMONTHDAY=31",
    ";BYMONTHDAY=29;BYMONTH=2",
    ";BYHOUR=3,17",
    ";BYMINUTE=0,30;BYSECOND=5",
    ";BYDAY=-1FR",
    ";BYSETPOS=-1;BYDAY=MO,TU,WE,TH,FR",
]


@settings(max_examples=300, deadline=None)
@given(
    freq=st.sampled_from(_FREQS),
    interval=st.integers(1, 13),
    extra=st.sampled_from(_EXTRAS),
    dtstart=st.datetimes(datetime(1990, 1, 1), datetime(2030, 1, 1)),
    periods=st.integers(0, 400),
    offset=st.timedeltas(timedelta(0), timedelta(days=3)),
    zone=st.sampled_from(["", ";TZID=Europe/Berlin", ";TZID=America/New_York"]),
)
def test_moving_dtstart_by_whole_periods_keeps_every_fire_time(
    freq: str, interval: int, extra: str, dtstart: datetime, periods: int, offset: timedelta, zone: str
) -> None:
    """The bounded rule finds what dateutil finds walking from DTSTART (checked where that walk
    is short enough to run): DST, 29 February, the 31st, last Fridays and set positions included.
    A rule dateutil finds empty only on that walk (every 9th second from second 2 of the day,
    BYMINUTE=0,30;BYSECOND=5) is refused by the config."""
    if "BYDAY=-1FR" in extra and freq not in ("MONTHLY", "YEARLY"):
        extra = ";BYDAY=FR"
    if "BYSETPOS" in extra and freq in ("HOURLY", "MINUTELY", "SECONDLY"):
        extra = ""
    text = f"DTSTART{zone}:{dtstart:%Y%m%dT%H%M%S}\nRRULE:FREQ={freq};INTERVAL={interval}{extra}"
    try:
        rule = rrulestr(text)
    except ValueError:  # a combination dateutil (and so the config) refuses
        assume(False)
    step = {"YEARLY": 366, "MONTHLY": 31, "WEEKLY": 7, "DAILY": 1}.get(freq, 1 / 24)
    if freq in ("MINUTELY", "SECONDLY"):
        step = 1 / (24 * 60) if freq == "MINUTELY" else 1 / 86400
    probe = rule._dtstart + timedelta(days=step * interval * periods) + offset  # type: ignore[attr-defined]
    try:
        expected = rule.after(probe, inc=True)
    except ValueError:
        with pytest.raises(ValueError, match=r"^rrule: matches no time: "):
            parse_schedule({"rrule": text})
        return
    if expected is not None and expected.year - probe.year > RRULE_LOOKAHEAD_YEARS:
        expected = None
    assert _bounded(rule, probe, None).after(probe, inc=True) == expected, text


def _due(spec: ScheduleSpec, cursor: datetime, catchup: str) -> DueSchedule:
    return DueSchedule(1, 1, "d", spec, cursor, "default", 0, 1, catchup, {})


def test_catch_up_after_a_month_down_looks_at_a_few_fire_times_not_all() -> None:
    """A month down beside a 1 s schedule: catch-up used to walk 2.6 million fire times."""
    spec = parse_schedule({"interval": "1s"})
    calls = 0
    original = ScheduleSpec.next_at_or_after

    def counted(self: ScheduleSpec, *args: Any) -> datetime | None:
        nonlocal calls
        calls += 1
        return original(self, *args)

    down = NOW - timedelta(days=30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ScheduleSpec, "next_at_or_after", counted)
        for catchup, kept in (("latest", 1), ("all", 50)):
            result = plan(
                _due(spec, down, catchup),
                NOW,
                NOW + timedelta(minutes=1),
                max_future=10,
                catchup_limit=50,
                tolerance=timedelta(seconds=3),
            )
            floor = NOW - timedelta(seconds=3)
            missed = [t for t in result.fire_times if t < floor]
            assert missed == [floor.replace(microsecond=0) - timedelta(seconds=kept - i) for i in range(kept)]
    assert calls < 20_000


# ---------------------------------------------------------------- the daemon


@pytest.mark.timeout(60)
def test_the_issues_rrule_ticks_and_previews_quickly(store: Store, make_config: MakeConfig) -> None:
    body = (
        f'[[deployments]]\nname = "old"\ncommand = ["true"]\nschedules = [{{ rrule = "{OLD_SECONDLY}" }}]\n'
    )
    config = make_config(
        body + f'[[deployments]]\nname = "never"\ncommand = ["true"]\nschedules = [{{ rrule = "{NEVER}" }}]\n'
    )
    scheduler = Scheduler(config, store)
    scheduler.apply_config()
    report = scheduler.tick()
    assert report.created >= 60  # every 10 s of the 10 minutes ahead
    assert config.path is not None
    result = Orchd(config.path, config.state_dir)("schedule", "preview", "old", "-n", "5")
    assert result.exit_code == 0 and result.stdout.count("rrule") == 5, result.output


def test_a_schedule_that_cannot_be_computed_is_skipped_alone(store: Store, make_config: MakeConfig) -> None:
    config = make_config(
        '[[deployments]]\nname = "bad"\ncommand = ["true"]\nschedules = [{ interval = "2m" }]\n'
        '[[deployments]]\nname = "good"\ncommand = ["true"]\nschedules = [{ interval = "1m" }]\n'
    )
    scheduler = Scheduler(config, store)
    scheduler.apply_config()
    # as an older orchd accepted it: timedelta(seconds=8.6e15) overflows
    with store.engine.begin() as conn:
        bad = select(deployments.c.id).where(deployments.c.name == "bad").scalar_subquery()
        conn.execute(update(schedules).where(schedules.c.deployment_id == bad).values(expr="99999999999d"))
    with capture_logs() as logs:
        first, second = scheduler.tick(), scheduler.tick()
    assert first.created > 0 and second.created == 0
    skipped = [e for e in logs if e["event"] == "schedule skipped: its fire times cannot be computed"]
    assert len(skipped) == 1 and skipped[0]["deployment"] == "bad", logs


def test_a_reload_the_database_refuses_keeps_the_running_config(
    store: Store, make_config: MakeConfig
) -> None:
    """README: a broken new config is logged and the old one stays in force.  One that validates
    but that the database refuses used to end the scheduler."""
    config = make_config(
        '[[deployments]]\nname = "a"\ncommand = ["true"]\nschedules = [{ interval = "1m" }]\n'
    )
    (dep,) = config.deployments
    refused = dataclasses.replace(
        config,
        deployments=(dep, dataclasses.replace(dep, name="b", parameters={"t": datetime.now(UTC)})),
    )
    reloads = iter([refused])
    stop = threading.Event()
    scheduler = Scheduler(config, store)
    with capture_logs() as logs:
        thread = threading.Thread(target=scheduler.run, args=(stop, lambda: next(reloads, None)), daemon=True)
        thread.start()
        wait_for(lambda: any(e["event"].startswith("reload refused") for e in logs), what="refused reload")
        wait_for(lambda: any(e["event"] == "tick" for e in logs), what="a tick after it")
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert scheduler.config is config
    with store.read() as conn:
        assert list(conn.execute(select(deployments.c.name))) == [("a",)]
        assert conn.execute(select(func.count()).select_from(runs)).scalar_one() > 0


def test_a_config_the_database_refuses_at_start_is_a_config_error(
    store: Store, make_config: MakeConfig
) -> None:
    config = make_config('[[deployments]]\nname = "a"\ncommand = ["true"]\n')
    (dep,) = config.deployments
    refused = dataclasses.replace(config, deployments=(dataclasses.replace(dep, parameters={"t": NOW}),))
    with pytest.raises(ConfigError, match="the database refused the config"):
        Scheduler(refused, store).apply_config()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_scheduler_answers_sigterm_while_it_is_stuck(tmp_path: Path, db_url: str) -> None:
    """A scheduler busy in a long statement (here: blocked on a lock the test holds) used to
    ignore SIGTERM until it finished; systemd then SIGKILLs it after TimeoutStopSec."""
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        '[scheduler]\nloop_interval = "100ms"\n[[deployments]]\nname = "a"\ncommand = ["true"]\n',
    )
    engine = create_engine(db_url)
    try:
        with daemons(tmp_path) as group, engine.connect() as conn:
            proc = group.start("orchd-scheduler", "--config", str(config))
            wait_for(lambda: "became leader" in group.output(), what="the scheduler to lead")
            # the upkeep (every 2 s) reads runs: the next one blocks on the lock
            conn.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
            waiting = (
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            wait_for(lambda: conn.execute(text(waiting)).first(), what="the scheduler to block")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            assert "still busy after the stop request: exiting now" in group.output()
            conn.rollback()
    finally:
        engine.dispose()

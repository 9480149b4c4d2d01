"""Times on the dashboard say which clock they are on: a short time on the page, the date, zone
and offset on hover; the hourly chart's hours on the same clock as the rest (this host's)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from orchd.cli.output import exact
from orchd.web import charts, words
from orchd.web.app import template_environment


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process on a clock half an hour off UTC (India), put back afterwards."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_time_on_hover_has_its_date_zone_and_offset(zone: None) -> None:
    noon = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert exact(noon) == "2026-12-04 17:30:00 IST (UTC+05:30)"
    assert exact(noon, UTC) == "2026-12-04 12:00:00 UTC"
    html = template_environment("/").from_string('{% from "_macros.html" import when %}{{ when(t) }}')
    shown = html.render(t=noon)
    assert (
        'datetime="2026-12-04T12:00:00+00:00"' in shown
        and 'title="2026-12-04 17:30:00 IST (UTC+05:30)"' in shown
    )
    assert ">17:30:00 (" in shown or ">2026-12-04 17:30:00 (" in shown  # the host's clock, and how long ago


def test_the_hourly_chart_counts_hours_on_the_hosts_clock(zone: None) -> None:
    start = datetime(2026, 12, 4, 0, 0, tzinfo=UTC)
    hours = [start + timedelta(hours=h) for h in range(24)]
    svg = str(charts.hourly(hours, {hours[0]: {"COMPLETED": 2}}, "IST"))
    assert ">05:30</text>" in svg and "<title>05:30 IST: 2 COMPLETED</title>" in svg
    assert ">00<" not in svg  # no hour labelled as if UTC were the local clock


def test_schedules_in_words_say_every_hour() -> None:
    assert [words.every(s) for s in (3600, 7200, 900, 86400)] == [
        "every hour",
        "every 2 h",
        "every 15 min",
        "every day",
    ]

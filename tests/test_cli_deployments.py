"""`orchd deployment ...`, `orchd schedule preview` and `orchd backfill` on both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchd.db.schema import runs, schedules
from orchd.db.store import Store
from orchd.models import Materialization
from orchd.scheduler.daemon import Scheduler
from orchd.states import RunState
from tests.cli_support import Orchd, now, write_config
from tests.helpers import states_count


@pytest.fixture
def orchd(tmp_path: Path, db_url: str) -> Orchd:
    return Orchd(write_config(tmp_path / "orchd.toml", db_url), tmp_path / "state")


@pytest.fixture
def applied(orchd: Orchd) -> Orchd:
    result = orchd("deployment", "apply")
    assert result.exit_code == 0, result.output
    return orchd


def run_count(store: Store, **where: object) -> int:
    with store.read() as conn:
        stmt = select(func.count()).select_from(runs)
        for column, value in where.items():
            stmt = stmt.where(runs.c[column] == value)
        return int(conn.execute(stmt).scalar_one())


def test_apply_creates_then_changes_nothing(orchd: Orchd, store: Store) -> None:
    first = orchd("deployment", "apply")
    assert first.exit_code == 0, first.output
    assert first.stdout == (
        f"{orchd.path}: 3 deployments applied: 3 created, 0 updated, 0 archived; "
        "schedules 3 added, 0 removed\n"
    )
    before = states_count(store)
    for _ in range(3):
        again = json.loads(orchd("deployment", "apply", "--json").stdout)
        assert again == {
            "path": str(orchd.path),
            "created": 0,
            "updated": 0,
            "archived": 0,
            "schedules_added": 0,
            "schedules_removed": 0,
        }
    assert states_count(store) == before
    orchd.path.write_text(orchd.path.read_text().replace('name = "fail"', 'name = "failing"'))
    renamed = json.loads(orchd("deployment", "apply", "--json").stdout)
    assert (renamed["created"], renamed["archived"]) == (1, 1)
    listed = [d["name"] for d in json.loads(orchd("deployment", "ls", "--json").stdout)]
    assert listed == ["failing", "hello", "minutely"]
    everything = {
        d["name"]: d["status"] for d in json.loads(orchd("deployment", "ls", "--all", "--json").stdout)
    }
    assert everything == {"fail": "archived", "failing": "active", "hello": "active", "minutely": "active"}
    result = orchd("run", "create", "fail")
    assert result.exit_code == 1 and "'fail' is archived" in result.stderr


def test_ls_and_show(applied: Orchd, store: Store) -> None:
    Scheduler(applied.config(), store).tick()
    run_id = store.create_run("fail", now())
    at = now()
    store.claim("w", ["default"], 5, at, at + timedelta(minutes=1))
    store.start_many({run_id: 1}, "w", at)
    store.finish(run_id, "w", RunState.FAILED, at, exit_code=3)
    table = applied("deployment", "ls")
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "POOL", "STATUS", "SCHEDULES", "NEXT", "RUN", "LAST", "RUN"]
    assert rows[0].split()[:4] == ["fail", "default", "active", "0"] and "FAILED" in rows[0]
    assert rows[2].split()[:4] == ["minutely", "default", "active", "2"] and "(in " in rows[2]
    listing = {d["name"]: d for d in json.loads(applied("deployment", "ls", "--json").stdout)}
    assert set(listing["fail"]) == {
        "name",
        "pool",
        "status",
        "priority",
        "schedules",
        "next_run_at",
        "last_run",
    }
    assert listing["fail"]["last_run"]["state"] == "FAILED" and listing["hello"]["last_run"] is None
    assert listing["minutely"]["next_run_at"] is not None
    shown = json.loads(applied("deployment", "show", "minutely", "--json").stdout)
    assert [(s["kind"], s["expr"], s["timezone"]) for s in shown["schedules"]] == [
        ("interval", "1m", "UTC"),
        ("cron", "30 2 * * *", "Europe/Berlin"),
    ]
    assert shown["spec"]["retries"] == 1 and shown["status"] == "active"
    assert shown["upcoming_runs"] and all(r["state"] == "SCHEDULED" for r in shown["upcoming_runs"])
    assert all(r["due_at"] <= now().isoformat() for r in shown["recent_runs"])
    text = applied("deployment", "show", "minutely").stdout
    assert "schedules:" in text and "Europe/Berlin" in text and "retries:" in text


def test_the_next_run_of_an_hourly_schedule_is_known_before_it_is_planned(
    applied: Orchd, store: Store
) -> None:
    """`deployment ls` showed `-` as NEXT RUN of an hourly schedule (only runs within the horizon
    counted), and `deployment show` listed planned runs as "recent" under "NEXT TO PLAN"."""
    done = store.create_run("hello", now() - timedelta(minutes=1))
    at = now()
    store.claim("w", ["default"], 5, at, at + timedelta(minutes=1))
    store.start_many({done: 1}, "w", at)
    store.finish(done, "w", RunState.COMPLETED, at, exit_code=0)
    top = (now() + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    listing = {d["name"]: d for d in json.loads(applied("deployment", "ls", "--json").stdout)}
    assert listing["hello"]["next_run_at"] == top.isoformat()  # interval 1h: at the top of the hour
    assert listing["fail"]["next_run_at"] is None  # no schedule
    rows = {line.split()[0]: line for line in applied("deployment", "ls").stdout.splitlines()[1:]}
    assert top.astimezone().strftime("%H:%M:%S") in rows["hello"]
    text = applied("deployment", "show", "hello").stdout
    schedules, last, upcoming = (
        text.split(f"\n{title}:\n")[1] for title in ("schedules", "last runs", "next runs")
    )
    assert schedules.splitlines()[0].split() == [
        "ID",
        "KIND",
        "EXPRESSION",
        "TIMEZONE",
        "ACTIVE",
        "NEXT",
        "FIRE",
        "TIME",
    ]
    assert top.astimezone().strftime("%H:%M:%S") in schedules.splitlines()[1]
    assert last.splitlines()[0].split() == ["ID", "STATE", "TRY", "DUE", "TOOK", "EXIT", "ERROR"]
    assert last.splitlines()[1].split()[:3] == [str(done), "COMPLETED", "1/1"]
    assert upcoming.splitlines() == ["ID  DUE"]  # no scheduler has planned anything yet
    shown = json.loads(applied("deployment", "show", "hello", "--json").stdout)
    assert shown["schedules"][0]["next_fire_time"] == top.isoformat()
    assert [r["id"] for r in shown["recent_runs"]] == [done] and shown["upcoming_runs"] == []


def planned_runs(store: Store) -> set[tuple[int, datetime]]:
    with store.read() as conn:
        return set(
            conn.execute(select(runs.c.schedule_id, runs.c.scheduled_for).where(runs.c.state == "SCHEDULED"))
        )


def test_pause_drops_planned_runs_and_resume_plans_them_again(applied: Orchd, store: Store) -> None:
    config = applied.config()

    def tick() -> None:  # a scheduler looking afresh, as it does at least every half minute
        Scheduler(config, store).tick()

    tick()
    before = planned_runs(store)
    planned = len(before)
    assert planned > 0
    paused = json.loads(applied("deployment", "pause", "minutely", "--json").stdout)
    assert paused["paused"] and paused["changed"] and paused["runs_dropped"] > 0
    assert run_count(store, state="SCHEDULED") == planned - paused["runs_dropped"]
    assert applied("deployment", "pause", "minutely").stdout == "deployment minutely was already paused\n"
    tick()
    assert run_count(store, state="SCHEDULED") == planned - paused["runs_dropped"]  # nothing new
    ls = {d["name"]: d["status"] for d in json.loads(applied("deployment", "ls", "--json").stdout)}
    assert ls["minutely"] == "paused"
    assert applied("deployment", "apply").exit_code == 0  # applying the config does not unpause
    assert {d["name"]: d["status"] for d in json.loads(applied("deployment", "ls", "--json").stdout)} == ls
    resumed = applied("deployment", "resume", "minutely")
    assert resumed.stdout.startswith("deployment minutely resumed")
    tick()
    assert planned_runs(store) >= before  # the same future fire times, planned again


def test_preview_reads_only_the_config(tmp_path: Path) -> None:
    orchd = Orchd(
        write_config(tmp_path / "orchd.toml", "postgresql://nobody:pw@127.0.0.1:1/none"), tmp_path / "state"
    )
    result = orchd("schedule", "preview", "minutely", "-n", "4", "--from", "2026-03-29T00:57:30+00:00")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["AT", "(SCHEDULE'S", "TIMEZONE)", "FROM"]
    assert [" ".join(line.split()[:4]) for line in lines[1:]] == [
        "Sun 2026-03-29 00:58:00 UTC",
        "Sun 2026-03-29 00:59:00 UTC",
        "Sun 2026-03-29 01:00:00 UTC",
        "Sun 2026-03-29 01:01:00 UTC",
    ]
    # across the spring-forward gap in Berlin: 02:30 does not exist that night and fires at 03:30
    berlin = json.loads(
        orchd("schedule", "preview", "minutely", "-n", "2000", "--from", "2026-03-28", "--json").stdout
    )
    crons = [p for p in berlin if p["schedule"].startswith("cron")]
    assert [(p["local"], p["at"]) for p in crons[:2]] == [
        ("2026-03-28T02:30:00+01:00", "2026-03-28T01:30:00+00:00"),
        ("2026-03-29T03:30:00+02:00", "2026-03-29T01:30:00+00:00"),
    ]
    assert set(crons[0]) == {"at", "local", "timezone", "schedule", "key"}
    none = orchd("schedule", "preview", "fail")
    assert (none.exit_code, none.stdout) == (0, "")
    assert "has no active schedule" in none.stderr


NEVER = """
[[deployments]]
name = "never"
command = ["true"]
schedules = [{ cron = "0 0 30 2 *" }, { at = 2020-01-01T00:00:00Z }, { interval = "1h", active = false }]

[[deployments]]
name = "monthly"
command = ["true"]
schedules = [{ rrule = "DTSTART:20260101T090000\\nRRULE:FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=17" }]
"""


def test_schedules_that_can_never_fire_are_warned_about(tmp_path: Path) -> None:
    """They validate and used to preview as an empty table with no word."""
    orchd = Orchd(write_config(tmp_path / "orchd.toml", "sqlite:///x.db", NEVER), tmp_path / "state")
    checked = orchd("config", "validate")
    assert checked.exit_code == 0
    assert checked.stdout == f"{orchd.path}: ok (2 deployments, 0 pools)\n"
    assert checked.stderr.splitlines() == [
        f"orchd: warning: {orchd.path}:7: deployments.never.schedules[0]: cron 0 0 30 2 * "
        "never fires: no date matches it",
        f"orchd: warning: {orchd.path}:7: deployments.never.schedules[1]: at 2020-01-01T00:00:00+00:00 "
        "never fires: its time is past",
    ]
    assert len(json.loads(orchd("config", "validate", "--json").stdout)["warnings"]) == 2
    preview = orchd("schedule", "preview", "never")
    assert (preview.exit_code, preview.stdout) == (0, "")
    assert preview.stderr.splitlines() == [
        "orchd: warning: never: cron 0 0 30 2 * never fires: no date matches it",
        "orchd: warning: never: at 2020-01-01T00:00:00+00:00 never fires: its time is past",
    ]


def test_an_rrule_previews_on_one_line(tmp_path: Path) -> None:
    orchd = Orchd(write_config(tmp_path / "orchd.toml", "sqlite:///x.db", NEVER), tmp_path / "state")
    preview = orchd("schedule", "preview", "monthly", "-n", "2", "--from", "2026-05-01")
    assert preview.exit_code == 0, preview.output
    _, *lines = preview.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "Fri 2026-05-29 17:00:00 UTC",
        "Fri 2026-06-26 17:00:00 UTC",
    ]
    for line in lines:
        assert line.endswith("  rrule DTSTART:20260101T090000 RRULE:FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=17")


def test_backfill_is_idempotent_and_shares_the_scheduler_key(applied: Orchd, store: Store) -> None:
    end = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    first = applied("backfill", "minutely", "--from", "2026-01-01T00:00:00Z", "--to", end.isoformat())
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("minutely: 31 runs created for 31 fire times between ")
    assert "backfilling minutely" in first.stderr  # the progress bar
    assert run_count(store) == 31
    again = json.loads(
        applied(
            "backfill", "minutely", "--from", "2026-01-01T00:15:00Z", "--to", "2026-01-01T00:45Z", "--json"
        ).stdout
    )
    assert again == {
        "deployment": "minutely",
        "from": "2026-01-01T00:15:00+00:00",
        "to": "2026-01-01T00:45:00+00:00",
        "fire_times": 31,
        "created": 15,
        "existing": 16,
    }
    with store.read() as conn:
        rows = conn.execute(
            select(runs.c.schedule_key, runs.c.schedule_id, runs.c.due_at, runs.c.scheduled_for)
        ).all()
        keys = {r.id: r.key for r in conn.execute(select(schedules.c.id, schedules.c.key))}
    assert all(keys[r.schedule_id] == r.schedule_key for r in rows)
    assert all(r.due_at > now() - timedelta(minutes=1) for r in rows)  # due now, not MISSED at once
    by_due = [r.scheduled_for for r in sorted(rows, key=lambda r: r.due_at)]
    assert by_due[:31] == sorted(by_due[:31])  # oldest first
    [due] = [
        s
        for s in store.due_schedules(now() + timedelta(days=1), 10)
        if s.deployment == "minutely" and s.spec.kind == "interval"
    ]
    assert store.materialize([Materialization(due, [end], due.next_fire_at)], now()) == 0  # the same key


def test_backfill_beyond_the_limit_needs_yes(applied: Orchd, store: Store) -> None:
    refused = applied("backfill", "minutely", "--from", "2h", "--to", "now")
    assert (
        refused.exit_code == 1
        and "(scheduler.backfill_limit): narrow the range, or add --yes" in refused.stderr
    )
    assert run_count(store) == 0
    done = json.loads(
        applied("backfill", "minutely", "--from", "2h", "--to", "now", "--yes", "--json").stdout
    )
    assert done["created"] == done["fire_times"] >= 120 and done["existing"] == 0
    assert run_count(store) == done["created"]

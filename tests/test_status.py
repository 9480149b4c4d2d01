"""`orchd status` on both databases: healthy is exit 0; each kind of trouble is exit 1 with the
check that failed saying what is wrong."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from orchd.cli.status import connection_check
from orchd.db import migrate
from orchd.db.engine import make_engine
from orchd.db.schema import schedulers
from orchd.db.server import Connections
from orchd.db.store import Store
from orchd.states import RunState
from tests.cli_support import POOL_HEADER, Orchd, now, write_config

BODY = """
[[deployments]]
name = "job"
command = ["true"]
schedules = [{ interval = "1h" }]
"""


@pytest.fixture
def orchd(tmp_path: Path, db_url: str, store: Store) -> Orchd:
    cli = Orchd(write_config(tmp_path / "orchd.toml", db_url, BODY), tmp_path / "state")
    store.sync(cli.config(), now())
    return cli


@pytest.fixture
def healthy(orchd: Orchd, store: Store) -> Orchd:
    """A leader that just ticked and a worker that just heartbeated: nothing wrong."""
    at = now()
    store.scheduler_seen("sched-1", "host-a", 4242, "leader", at, at)
    store.scheduler_seen("sched-2", "host-b", 4343, "standby", at, at)
    store.register_worker("w1", "host-a", 4244, ["default"], 4, at)
    return orchd


def failed_checks(orchd: Orchd, *args: str) -> dict[str, str]:
    result = orchd("status", "--json", *args)
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["healthy"] else 1), result.output
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


def test_healthy_is_exit_0(healthy: Orchd, store: Store, backend: str) -> None:
    result = healthy("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("orchd status at ")
    assert lines[1].startswith("ok    database   ") and "schema " in lines[1] and "(current)" in lines[1]
    assert (
        lines[2] == "ok    scheduler  leader host-a (pid 4242), seen 0s ago (it reports every 10s); 1 standby"
    )
    assert lines[3] == "ok    workers    1 online"
    assert lines[4:7] == [
        "ok    late runs  none due more than 1m ago",
        "ok    stuck runs none past their lease",
        "ok    failures   none in the last hour",
    ]
    postgres = backend == "postgresql"
    if postgres:  # the server's connections: this test's own are orchd's
        assert re.fullmatch(r"ok    connections \d+ of \d+ in use \(\d+%\), \d+ of them orchd's", lines[7])
    assert lines[8 + postgres].split() == POOL_HEADER
    assert lines[9 + postgres].split()[:5] == ["default", "open", "-", "1", "4"]
    report = json.loads(healthy("status", "--json").stdout)
    assert report["healthy"] is True
    assert [c["name"] for c in report["checks"]] == [
        "database",
        "scheduler",
        "workers",
        "late runs",
        "stuck runs",
        "failures",
        *(["connections"] if postgres else []),
    ]
    assert report["scheduler"]["host"] == "host-a" and report["scheduler"]["pid"] == 4242
    assert report["database"]["revision"] == report["database"]["head"] == migrate.head_revision()
    assert (
        report["workers_online"],
        report["late_runs"],
        report["stuck_runs"],
        report["failures_last_hour"],
    ) == (
        1,
        [],
        [],
        0,
    )
    assert report["pools"][0]["name"] == "default"
    if postgres:
        assert (
            report["connections"]["limit"]
            > report["connections"]["used"]
            >= report["connections"]["orchd"]
            >= 1
        )
    else:
        assert report["connections"] is None


def test_connections_near_max_connections_need_attention() -> None:
    assert connection_check(None) == []  # SQLite
    [fine] = connection_check(Connections(used=150, orchd=120, limit=297))
    assert fine.ok and fine.detail == "150 of 297 in use (51%), 120 of them orchd's"
    [near] = connection_check(Connections(used=250, orchd=230, limit=297))
    assert not near.ok and near.detail.startswith(
        "250 of 297 in use (84%), 230 of them orchd's: near max_connections, and then new workers"
    )


def test_no_workers(orchd: Orchd, store: Store) -> None:
    at = now()
    store.scheduler_seen("sched-1", "host-a", 4242, "leader", at, at)
    assert failed_checks(orchd) == {"workers": "pool default: no worker online (0 runs due)"}
    store.register_worker("w1", "host-a", 1, ["default"], 4, at - timedelta(minutes=10))  # silent since
    assert "workers" in failed_checks(orchd)
    result = orchd("status")
    assert result.exit_code == 1
    assert "FAIL  workers    pool default: no worker online" in result.stdout
    assert result.stdout.rstrip().endswith("1 check needs attention")


def test_no_scheduler_or_a_silent_one(healthy: Orchd, store: Store) -> None:
    at = now() - timedelta(minutes=5)
    with store.engine.begin() as conn:
        conn.execute(schedulers.delete())
    assert failed_checks(healthy) == {
        "scheduler": "no scheduler has run on this database: start orchd-scheduler"
    }
    store.scheduler_seen("sched-1", "host-a", 4242, "leader", at, at)
    assert failed_checks(healthy) == {
        "scheduler": "no leader seen for 2m: the last was host-a (pid 4242), seen 5m ago"
    }


def test_stuck_runs(healthy: Orchd, store: Store) -> None:
    run_id = store.create_run("job", now())
    at = now()
    store.claim("w-dead", ["default"], 1, at, at - timedelta(minutes=1))  # a lease that ran out
    store.start_many({run_id: 99}, "w-dead", at)
    failed = failed_checks(healthy)
    assert failed == {"stuck runs": f"1 run past their lease: {run_id} (is a scheduler up to reap them?)"}
    assert json.loads(healthy("status", "--json").stdout)["stuck_runs"] == [run_id]


def test_late_runs_and_failures(healthy: Orchd, store: Store) -> None:
    late = store.create_run("job", now() - timedelta(minutes=5))
    assert failed_checks(healthy) == {"late runs": f"1 run due more than 1m ago, still waiting: {late}"}
    assert failed_checks(healthy, "--late-after", "10m") == {}
    at = now()
    store.claim("w1", ["default"], 1, at, at + timedelta(minutes=1))
    store.start_many({late: 1}, "w1", at)
    store.finish(late, "w1", RunState.FAILED, at, exit_code=1, error="exit code 1")
    hint = "orchd run ls --since 1h --state FAILED --state TIMED_OUT --state CRASHED"
    assert failed_checks(healthy) == {
        "failures": f"1 run failed, timed out or crashed in the last hour ({hint})"
    }
    timed_out = store.create_run("job", now())
    store.claim("w1", ["default"], 1, now(), now() + timedelta(minutes=1))
    store.start_many({timed_out: 2}, "w1", now())
    store.finish(timed_out, "w1", RunState.TIMED_OUT, now(), error="timed out after 1s")
    assert failed_checks(healthy)["failures"].startswith("2 runs failed, timed out or crashed")
    # the command the hint gives lists exactly the runs it counted
    listed = healthy(*hint.split()[1:], "--json")
    assert sorted(r["id"] for r in json.loads(listed.stdout)) == sorted([late, timed_out])


def test_an_old_schema_fails_the_database_check(empty_url: str, tmp_path: Path) -> None:
    orchd = Orchd(write_config(tmp_path / "orchd.toml", empty_url, BODY), tmp_path / "state")
    engine = make_engine(orchd.config().database)
    engine.connect().close()
    failed = failed_checks(orchd)
    assert list(failed) == ["database"] and failed["database"].endswith("run `orchd db upgrade`")
    engine.dispose()


def test_an_unreachable_database_fails_the_database_check(tmp_path: Path) -> None:
    orchd = Orchd(
        write_config(tmp_path / "orchd.toml", "postgresql://u:pw@127.0.0.1:1/x", BODY), tmp_path / "s"
    )
    result = orchd("status")
    assert result.exit_code == 1
    assert "FAIL  database   cannot reach PostgreSQL at 127.0.0.1:1/x: " in result.stdout
    assert "pw" not in result.output

"""Least-privilege PostgreSQL roles (`orchd db roles`): the daemons do all their work under theirs on
a real PostgreSQL, a viewer reads everything, and a worker's role is refused a deployment's edit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from orchd.db import roles
from orchd.db.schema import metadata, runs, workers
from orchd.db.store import Store
from tests.cli_support import Orchd, one_line_error
from tests.helpers import daemons, run_cli, wait_for, write_config

POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])
BODY = """
[scheduler]
loop_interval = "200ms"
retention = "1d"
[worker]
heartbeat = "500ms"
lease_timeout = "3s"
poll_interval = "500ms"
[[pools]]
name = "default"
concurrency_limit = 3
[[deployments]]
name = "ok"
command = ["sh", "-c", "echo hello"]
schedules = [{ interval = "1s" }]
[[deployments]]
name = "flaky"
command = ["sh", "-c", "echo trying; exit 1"]
retries = 1
retry_delay = "0s"
[[deployments]]
name = "capped"
command = ["true"]
max_active_runs = 1
[[deployments]]
name = "chained"
command = ["true"]
triggers = [{ after = "flaky", on = ["FAILED"] }]
[[notifications]]
name = "told"
on = ["FAILED"]
deployments = ["flaky"]
command = ["true"]
"""


def test_every_table_is_decided_for_every_role() -> None:
    tables = set(metadata.tables) | {"alembic_version"}
    for role, grants in roles.GRANTS.items():
        assert set(grants) == tables, f"{role}: say what it may do on {tables ^ set(grants)}"


@pytest.fixture
def prefix(db_url: str) -> Iterator[str]:
    """A fresh prefix (roles are the cluster's, not the database's), dropped afterwards."""
    name = f"orchd_t{uuid.uuid4().hex[:8]}"
    yield name
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for role in roles.role_names(name).values():
                if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                    conn.execute(text(f'DROP OWNED BY "{role}"'))
                    conn.execute(text(f'DROP ROLE "{role}"'))
    finally:
        engine.dispose()


def _as(db_url: str, role: str) -> str:
    return make_url(db_url).set(username=role).render_as_string(hide_password=False)


@POSTGRESQL
def test_the_daemons_work_under_their_roles_and_a_worker_cannot_edit_a_deployment(
    tmp_path: Path, db_url: str, prefix: str, store: Store
) -> None:
    owner = Orchd(write_config(tmp_path / "owner.toml", db_url, BODY), tmp_path / "state")
    printed = owner("db", "roles", "--prefix", prefix)
    assert printed.exit_code == 0 and f"GRANT SELECT ON public.runs TO {prefix}_viewer" in printed.stdout
    applied = owner("db", "roles", "--apply", "--prefix", prefix)
    assert applied.exit_code == 0, applied.output
    assert owner("db", "roles", "--apply", "--prefix", prefix).exit_code == 0  # again: the same grants
    names = roles.role_names(prefix)
    configs = {
        role: write_config(tmp_path / f"{role}.toml", _as(db_url, name), BODY) for role, name in names.items()
    }
    # what the scheduler must clean up: a finished run past retention, a worker long gone
    now = datetime.now(UTC)
    owner("deployment", "apply")
    old = store.create_run("ok", now - timedelta(days=3))
    with store.engine.begin() as conn:
        conn.execute(
            runs.update()
            .where(runs.c.id == old)
            .values(state="COMPLETED", finished_at=now - timedelta(days=2))
        )
        conn.execute(
            workers.insert().values(
                name="gone", host="h", pid=1, pools=["default"], concurrency=1, version="0",
                status="online", started_at=now - timedelta(days=3), last_heartbeat=now - timedelta(days=2),
            )
        )  # fmt: skip
    store.match_events([], now)  # the outbox reads the history from here: the flaky run's failure is told
    flaky, capped = store.create_run("flaky", now), [store.create_run("capped", now) for _ in range(3)]
    with daemons(tmp_path) as group:
        scheduler = group.start("orchd-scheduler", "--config", str(configs["scheduler"]))
        worker = group.start(
            "orchd-worker", "--config", str(configs["worker"]), "--pool", "default", "--pool", "extra"
        )

        def done() -> bool:
            with store.read() as conn:
                states = dict(conn.execute(select(runs.c.id, runs.c.state)).all())
                gone = conn.execute(select(workers.c.name).where(workers.c.name == "gone")).first()
                chained = conn.execute(select(runs.c.state).where(runs.c.upstream_run_id == flaky)).all()
            completed_ok = any(s == "COMPLETED" for i, s in states.items() if i not in {old, flaky, *capped})
            return (
                old not in states
                and gone is None
                and states.get(flaky) == "FAILED"
                and all(states.get(c) == "COMPLETED" for c in capped)
                and completed_ok
                and [c.state for c in chained] == ["COMPLETED"]  # the worker queued it, and ran it
                and [d.state for d in store.deliveries()] == ["delivered"]
            )

        wait_for(done, timeout=60, what=f"the daemons' work; logs:\n{group.output()}")
        assert group.stop(worker) == 0 and group.stop(scheduler) == 0, group.output()
        assert "permission denied" not in group.output()
    row = store.get_run(flaky)
    assert row is not None and row.attempt == 2
    # a viewer reads what a person looks at
    viewer = Orchd(configs["viewer"], tmp_path / "state")
    for args in (
        ["run", "ls"],
        ["run", "show", str(flaky)],
        ["run", "logs", str(flaky)],
        ["worker", "ls"],
        ["pool", "ls"],
        ["notification", "log"],
    ):
        result = viewer(*args)
        assert result.exit_code == 0, (args, result.output)
    assert "permission denied" not in viewer("status").output
    # a worker's role may not edit a deployment, a schedule or a pool; a viewer nothing at all
    result = Orchd(configs["worker"], tmp_path / "state")("deployment", "pause", "ok")
    one_line_error(result, 1, "permission denied for table deployments")
    assert "schema" not in result.stderr
    one_line_error(viewer("run", "create", "ok", "--at", "1h"), 1, "permission denied for table runs")
    for role, statement in (
        ("worker", "UPDATE deployments SET paused = true"),
        ("worker", "UPDATE deployments SET spec = '{}'"),
        ("worker", "UPDATE schedules SET active = false"),
        ("worker", "UPDATE pools SET paused = true, concurrency_limit = 1"),
        ("worker", "DELETE FROM runs"),
        ("viewer", "UPDATE runs SET state = 'CANCELLED'"),
        ("viewer", "INSERT INTO pools (name, created_at, updated_at) VALUES ('x', now(), now())"),
    ):
        engine = create_engine(_as(db_url, names[role]))
        try:
            with pytest.raises(ProgrammingError, match="permission denied"), engine.begin() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()


@POSTGRESQL
def test_a_daemon_that_may_not_migrate_says_so(tmp_path: Path, db_url: str, prefix: str) -> None:
    owner = Orchd(write_config(tmp_path / "owner.toml", db_url, BODY), tmp_path / "state")
    assert owner("db", "roles", "--apply", "--prefix", prefix).exit_code == 0
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    finally:
        engine.dispose()
    config = write_config(tmp_path / "s.toml", _as(db_url, f"{prefix}_scheduler"), BODY)
    result = run_cli(["--config", str(config)], command="orchd-scheduler", timeout=60)
    assert result.returncode == 78, result
    assert "cannot upgrade the schema" in result.stderr and "orchd db upgrade" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_roles_are_a_postgresql_matter(tmp_path: Path, db_url: str) -> None:
    owner = Orchd(write_config(tmp_path / "owner.toml", db_url, BODY), tmp_path / "state")
    one_line_error(owner("db", "roles"), 1, "roles are a PostgreSQL matter")

"""Schema migrations from empty, on both databases, and the schema/migration drift check."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect

from orchd.cli import main
from orchd.config import load_config
from orchd.db import migrate
from orchd.db.engine import make_engine
from orchd.db.schema import metadata


def _engine(url: str):  # type: ignore[no-untyped-def]
    return make_engine(load_config("/dev/null", env={"ORCHD_DATABASE_URL": url}).database)


def test_upgrade_from_empty_creates_the_whole_schema(empty_url: str) -> None:
    engine = _engine(empty_url)
    assert migrate.current_revision(engine) is None
    with pytest.raises(migrate.SchemaOutdated, match="orchd db upgrade"):
        migrate.ensure_current(engine)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.ensure_current(engine)
    insp = inspect(engine)
    assert {
        "deployments",
        "schedules",
        "pools",
        "runs",
        "run_states",
        "run_logs",
        "workers",
        "schedulers",
    } <= set(insp.get_table_names())
    uniques = {u["name"]: u["column_names"] for u in insp.get_unique_constraints("runs")}
    indexes = {i["name"]: i for i in insp.get_indexes("runs")}
    key = ["deployment_id", "schedule_key", "scheduled_for"]
    assert uniques.get("uq_runs_schedule_time") == key or indexes["uq_runs_schedule_time"]["unique"]
    assert "ix_runs_due" in indexes
    engine.dispose()


def test_migrations_match_the_schema_module(db_url: str) -> None:
    """A revision that forgets a column (or schema.py that forgets a revision) fails here."""
    engine = _engine(db_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_downgrade_and_upgrade_again(empty_url: str) -> None:
    engine = _engine(empty_url)
    migrate.upgrade(engine)
    migrate.downgrade(engine)
    assert migrate.current_revision(engine) is None
    assert "runs" not in inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_concurrent_upgrades_do_not_collide(empty_url: str) -> None:
    """A scheduler and workers starting together all migrate on start."""
    errors: list[BaseException] = []
    engines = [_engine(empty_url) for _ in range(3)]

    def go(engine) -> None:  # type: ignore[no-untyped-def]
        try:
            migrate.upgrade(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert migrate.current_revision(engines[0]) == migrate.head_revision()
    for e in engines:
        e.dispose()


def test_cli_db_status_and_upgrade(empty_url: str) -> None:
    env = {"ORCHD_DATABASE_URL": empty_url, "ORCHD_CONFIG": "/dev/null"}
    runner = CliRunner()
    before = runner.invoke(main, ["db", "status"], env=env)
    assert before.exit_code == 1
    assert "needs `orchd db upgrade`" in before.output
    up = runner.invoke(main, ["db", "upgrade"], env=env)
    assert up.exit_code == 0, up.output
    assert "upgraded empty -> " in up.output
    again = runner.invoke(main, ["db", "upgrade"], env=env)
    assert "already at" in again.output
    after = runner.invoke(main, ["db", "status", "--json"], env=env)
    assert after.exit_code == 0
    assert '"current": true' in after.output


def test_head_constant_matches_the_migration_scripts() -> None:
    """Daemons compare the schema with migrate.HEAD without loading Alembic: keep it in step."""
    assert migrate.head_revision() == migrate.HEAD

"""Least-privilege PostgreSQL roles: one for the scheduler, one for the workers, one read-only.

The owner of orchd's tables (who runs `orchd db upgrade`) can do anything; the daemons need much
less.  A worker claims, runs and records runs: it cannot change a deployment, a schedule or a
pool's limit or pause (it may register a pool it serves, with nothing but its name); it inserts
runs only as the run chains of the runs it ends (``transitions.fire_triggers``).  The
scheduler keeps deployments, schedules and pools in line with the config and looks after runs and
workers.  A viewer (`orchd status`, `run ls`, a dashboard for people who look) changes nothing.

``GRANTS`` lists every table for every role, with no privilege where it needs none: a new table
has to be thought about here (a test fails until it is).  Two grants look odd and are needed: a
claim locks the rows of capped pools and deployments (``SELECT ... FOR UPDATE``), which PostgreSQL
allows only with the UPDATE privilege on some column, so the worker may update their
``updated_at`` and nothing else; and the referential deletes of history and output that go with a
pruned run run as the tables' owner, so the scheduler needs DELETE on ``runs`` only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sqlalchemy import Engine, text

#: role -> table -> privileges ("" for none).  The roles are PREFIX_scheduler, PREFIX_worker, PREFIX_viewer.
GRANTS: Mapping[str, Mapping[str, str]] = {
    "scheduler": {
        "deployments": "SELECT, INSERT, UPDATE",
        "schedules": "SELECT, INSERT, UPDATE",
        "pools": "SELECT, INSERT, UPDATE",
        "runs": "SELECT, INSERT, UPDATE, DELETE",
        "run_states": "SELECT, INSERT",
        "run_logs": "SELECT",
        "workers": "SELECT, UPDATE, DELETE",
        "schedulers": "SELECT, INSERT, UPDATE, DELETE",
        "triggers": "SELECT, INSERT, DELETE",
        "event_cursors": "SELECT, INSERT, UPDATE",
        "notifications": "SELECT, INSERT, UPDATE, DELETE",
        "notification_attempts": "SELECT, INSERT, DELETE",
        "alembic_version": "SELECT",
    },
    "worker": {
        "deployments": "SELECT, UPDATE (updated_at)",
        "schedules": "",
        "pools": "SELECT, INSERT (name, created_at, updated_at), UPDATE (updated_at)",
        "runs": "SELECT, INSERT, UPDATE",
        "run_states": "SELECT, INSERT",
        "run_logs": "SELECT, INSERT",
        "workers": "SELECT, INSERT, UPDATE",
        "schedulers": "",
        "triggers": "SELECT",
        "event_cursors": "",
        "notifications": "",
        "notification_attempts": "",
        "alembic_version": "SELECT",
    },
    "viewer": {
        table: "SELECT"
        for table in (
            "deployments",
            "schedules",
            "pools",
            "runs",
            "run_states",
            "run_logs",
            "workers",
            "schedulers",
            "triggers",
            "event_cursors",
            "notifications",
            "notification_attempts",
            "alembic_version",
        )
    },
}
#: Tables whose id comes from a sequence: a role that inserts into them needs to use it.
SERIAL_TABLES = (
    "deployments",
    "schedules",
    "runs",
    "run_states",
    "run_logs",
    "notifications",
    "notification_attempts",
)
DEFAULT_PREFIX = "orchd"


PREFIX_PATTERN = r"[a-z_][a-z0-9_]{0,40}"


def role_names(prefix: str) -> dict[str, str]:
    if not re.fullmatch(PREFIX_PATTERN, prefix):
        raise ValueError(f"expected a role prefix of lowercase letters, digits and '_', got {prefix!r}")
    return {role: f"{prefix}_{role}" for role in GRANTS}


def statements(engine: Engine, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The SQL that creates the roles (without a password: set one, or use certificates or peer
    authentication) and grants each what it needs on the configured database and schema, after
    revoking what it had, so running it again after an upgrade leaves exactly these grants."""
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect() as conn:
        database, schema = conn.execute(text("SELECT current_database(), current_schema()")).one()
        sequences = {
            table: conn.execute(
                text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": f"{schema}.{table}"}
            ).scalar()
            for table in SERIAL_TABLES
        }  # already quoted and qualified
    names = role_names(prefix)
    every = ", ".join(quote(name) for name in names.values())
    sql = [
        "DO $$ BEGIN\n"
        + "".join(
            f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN\n"
            f"    CREATE ROLE {quote(name)} LOGIN;\n  END IF;\n"
            for name in names.values()
        )
        + "END $$",
        f"GRANT CONNECT ON DATABASE {quote(database)} TO {every}",
        f"GRANT USAGE ON SCHEMA {quote(schema)} TO {every}",
    ]
    for role, tables in GRANTS.items():
        who = quote(names[role])
        sql += [
            f"REVOKE ALL ON SEQUENCE {sequence} FROM {who}" for sequence in sequences.values() if sequence
        ]
        for table, privileges in tables.items():
            target = f"{quote(schema)}.{quote(table)}"
            sql.append(f"REVOKE ALL ON {target} FROM {who}")
            if privileges:
                sql.append(f"GRANT {privileges} ON {target} TO {who}")
        for table in SERIAL_TABLES:
            if sequences[table] and "INSERT" in tables[table]:
                sql.append(f"GRANT USAGE ON SEQUENCE {sequences[table]} TO {who}")
    return sql


def apply(engine: Engine, sql: list[str]) -> None:
    """Run the statements in one transaction: all of them, or none."""
    with engine.begin() as conn:
        for statement in sql:
            conn.execute(text(statement))

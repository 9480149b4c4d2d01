"""Schema migrations with Alembic; the revisions ship inside the package (orchd/db/migrations)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from orchd.errors import OrchdError

# Any constant works; it only has to be the same for every orchd process sharing a database.
_MIGRATION_LOCK = 0x6F726368


class SchemaOutdated(OrchdError):
    pass


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "orchd.db:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply pending migrations.  Concurrent callers (a scheduler and workers starting together)
    are serialised: by an advisory lock on PostgreSQL, by BEGIN IMMEDIATE on SQLite."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), revision)


def ensure_current(engine: Engine) -> None:
    """Refuse to run against a schema this version of orchd does not know."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "empty" if current is None else f"at revision {current}"
        raise SchemaOutdated(f"the database schema is {state}, orchd needs {head}: run `orchd db upgrade`")

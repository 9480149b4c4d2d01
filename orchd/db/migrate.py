"""Schema migrations with Alembic; the revisions ship inside the package (orchd/db/migrations).

Daemons check the schema at every start, so that check is plain SQL against ``HEAD``: Alembic
(and the memory it costs) is imported only when there is something to migrate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from orchd.db.base import reading
from orchd.errors import OrchdError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

#: The newest revision under migrations/versions (a test keeps the two in step).
HEAD = "0007"
# Any constant works; it only has to be the same for every orchd process sharing a database.
_MIGRATION_LOCK = 0x6F726368


class SchemaOutdated(OrchdError):
    pass


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "orchd.db:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision according to the migration scripts themselves."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def current_revision(engine: Engine) -> str | None:
    """The schema's revision (None: no schema); inside a ``snapshot()`` block, read in it."""
    with reading(engine) as conn:
        return _current(conn)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply pending migrations.  Concurrent callers (a scheduler and workers starting together)
    are serialised: by an advisory lock on PostgreSQL, by BEGIN IMMEDIATE on SQLite."""
    if revision == "head" and current_revision(engine) == HEAD:
        return
    from alembic import command

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), revision)


def wipe(engine: Engine) -> None:
    """Drop every orchd table (and Alembic's bookkeeping), then re-create the schema by migrating."""
    from orchd.db.schema import metadata

    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    upgrade(engine)


def ensure_current(engine: Engine) -> None:
    """Refuse to run against a schema this version of orchd does not know."""
    current = current_revision(engine)
    if current != HEAD:
        state = "empty" if current is None else f"at revision {current}"
        raise SchemaOutdated(f"the database schema is {state}, orchd needs {HEAD}: run `orchd db upgrade`")

"""Facts about the PostgreSQL server itself (not orchd's tables), for `orchd status`.

A fleet grows one worker at a time, and each brings its connections (README, "Scaling out"); the
day the server's ``max_connections`` is reached, the next worker, CLI command or scheduler
failover is refused with "too many clients already".  `orchd status` says so before that day.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from orchd.db.base import reading


@dataclass(frozen=True)
class Connections:
    #: Client connections to the server now (all databases, all users).
    used: int
    #: Of which orchd's (application_name orchd...: pools, LISTEN, the leader lock, the web).
    orchd: int
    #: What ordinary users may open: max_connections less the slots reserved for superusers.
    limit: int

    @property
    def share(self) -> float:
        return self.used / self.limit if self.limit > 0 else 1.0


#: reserved_connections (PostgreSQL 16+) is absent before: current_setting(..., true) gives NULL.
_QUERY = text(
    """
    SELECT
        (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS used,
        (SELECT count(*) FROM pg_stat_activity
          WHERE backend_type = 'client backend' AND application_name LIKE 'orchd%') AS orchd,
        current_setting('max_connections')::int
          - current_setting('superuser_reserved_connections')::int
          - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0) AS limit
    """
)


def connections(engine: Engine) -> Connections | None:
    """The server's connections now; None on SQLite (one file, no server).  Inside a
    ``snapshot()`` block, read in it."""
    if engine.dialect.name != "postgresql":
        return None
    with reading(engine) as conn:
        row = conn.execute(_QUERY).one()
    return Connections(int(row.used), int(row.orchd), int(row.limit))

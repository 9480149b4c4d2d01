"""The data model (SQLAlchemy Core).  Alembic revisions under migrations/ create it; a test keeps
the two identical.

``runs`` is the work queue.  ``scheduled_for`` is the nominal fire time and never changes (it is
part of the idempotency key); ``due_at`` is when the run may next be claimed and moves forward on
a retry.  The unique key uses the deployment id, which is stable because deployments are matched
by name and never deleted, and the schedule *key* (a hash of its definition), never a schedule
row id.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from orchd.db.types import BigID, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)
ACTIVE_STATES_SQL = "state IN ('PENDING', 'RUNNING', 'CANCELLING')"
#: The same condition for queries that want the partial indexes on active runs: SQLite uses a
#: partial index only when the query states its condition literally, never for bound parameters
#: (``runs.c.state.in_([...])`` scans the whole table).
RUNS_ACTIVE = text("runs." + ACTIVE_STATES_SQL)

deployments = Table(
    "deployments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("pool", String(128), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("archived_at", UTCDateTime),
    Column("config_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("deployment_id", Integer, ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("expr", Text, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("anchor", UTCDateTime),
    Column("parameters", JSON, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("archived_at", UTCDateTime),
    Column("jitter", Float, nullable=False, server_default="0"),
    # Materialization cursor: the earliest fire time not yet turned into a run.
    Column("next_fire_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("deployment_id", "key"),
    Index(
        "ix_schedules_due",
        "next_fire_at",
        sqlite_where=text("active AND archived_at IS NULL"),
        postgresql_where=text("active AND archived_at IS NULL"),
    ),
)

pools = Table(
    "pools",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("concurrency_limit", Integer),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", BigID, primary_key=True),
    Column("deployment_id", Integer, ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False),
    Column("schedule_id", Integer, ForeignKey("schedules.id", ondelete="SET NULL")),
    Column("schedule_key", String(64)),
    Column("pool", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("scheduled_for", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("max_attempts", Integer, nullable=False, server_default="1"),
    Column("parameters", JSON, nullable=False),
    Column("worker", String(255)),
    Column("pid", Integer),
    Column("lease_expires_at", UTCDateTime),
    Column("claimed_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("exit_code", Integer),
    Column("error", Text),
    Column("result", JSON),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # A triggered run: the upstream run whose end created it.  No foreign key: retention may delete
    # the upstream first, and the id must stay as the key (ids are never reused while a higher
    # one, such as this run's own, exists).
    Column("upstream_run_id", BigInteger),
    UniqueConstraint("deployment_id", "schedule_key", "scheduled_for", name="uq_runs_schedule_time"),
    # A trigger's idempotency key: one run of a downstream deployment per upstream run, however
    # often that run's end is recorded (a manual retry) or by whom.  Upstream first: it also finds
    # a run's downstream runs.  Of triggered runs only (migration 0007): SQLite's statistics count
    # the NULLs of every other run as one value, and its planner then preferred a scan.
    Index(
        "uq_runs_upstream",
        "upstream_run_id",
        "deployment_id",
        unique=True,
        sqlite_where=text("upstream_run_id IS NOT NULL"),
        postgresql_where=text("upstream_run_id IS NOT NULL"),
    ),
    Index(
        "ix_runs_active_lease",
        "lease_expires_at",
        sqlite_where=text(ACTIVE_STATES_SQL),
        postgresql_where=text(ACTIVE_STATES_SQL),
    ),
    Index(
        "ix_runs_active_worker",
        "worker",
        sqlite_where=text(ACTIVE_STATES_SQL),
        postgresql_where=text(ACTIVE_STATES_SQL),
    ),
    Index("ix_runs_deployment_scheduled", "deployment_id", "scheduled_for"),
    Index("ix_runs_finished_at", "finished_at"),
    # run pages, newest first, keyset-paginated (Reports.runs_page)
    Index("ix_runs_scheduled", "scheduled_for", "id"),
    # the same, filtered by state, of all runs or of one deployment's (migration 0004)
    Index("ix_runs_state_scheduled", "state", "scheduled_for", "id"),
    Index("ix_runs_deployment_state", "deployment_id", "state", "scheduled_for", "id"),
)

# The claim index: due runs of a pool, highest priority first, oldest first; only SCHEDULED rows,
# so it stays small however long the history grows.
Index(
    "ix_runs_due",
    runs.c.pool,
    runs.c.priority.desc(),
    runs.c.due_at,
    sqlite_where=text("state = 'SCHEDULED'"),
    postgresql_where=text("state = 'SCHEDULED'"),
)

run_states = Table(
    "run_states",
    metadata,
    Column("id", BigID, primary_key=True),
    Column("run_id", BigID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(255)),
    Column("reason", Text),
    Index("ix_run_states_run", "run_id", "id"),
)

run_logs = Table(
    "run_logs",
    metadata,
    Column("id", BigID, primary_key=True),
    Column("run_id", BigID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("stream", String(8), nullable=False),
    Column("line", Text, nullable=False),
    Index("ix_run_logs_run", "run_id", "id"),
)

# Run chains, kept equal to the config's ``triggers``: a run of ``upstream_id`` ending in ``state``
# (for good: no retry left) queues a run of ``downstream_id``.  One row per state, so the lookup
# at every run's end is one index probe.
triggers = Table(
    "triggers",
    metadata,
    Column("upstream_id", Integer, ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True),
    Column("state", String(16), primary_key=True),
    Column("downstream_id", Integer, ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True),
)

workers = Table(
    "workers",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pools", JSON, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("running", Integer, nullable=False, server_default="0"),
    Column("version", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_heartbeat", UTCDateTime, nullable=False),
)

schedulers = Table(
    "schedulers",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("version", String(32), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_tick_at", UTCDateTime),
)

# Consumers of the event log (``run_states``): where each has read up to.  ``position`` is the
# highest event id read; ``gaps`` the id ranges below it not yet seen, which a transaction still
# open when the consumer read past them may fill yet (PostgreSQL hands out ids at insert, not in
# commit order): [[low, high, first seen (epoch seconds)], ...].
event_cursors = Table(
    "event_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("gaps", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# The notification outbox: one row per (rule, event, channel), written in the transaction that
# matches the event, so a restart or a second scheduler never doubles a message.  ``state``:
# pending -> sending -> delivered | pending (retry) | failed; throttled rows are counted in the
# next message ("+N more") and never sent.
notifications = Table(
    "notifications",
    metadata,
    Column("id", BigID, primary_key=True),
    Column("rule", String(128), nullable=False),
    Column("event_key", String(128), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("event", String(32), nullable=False),
    Column("run_id", BigInteger),
    Column("deployment", String(128)),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    # when a pending row may be sent next; while sending, when the attempt is given up as lost
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("suppressed", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    UniqueConstraint("rule", "event_key", "channel"),
    Index(
        "ix_notifications_due",
        "next_attempt_at",
        sqlite_where=text("state IN ('pending', 'sending')"),
        postgresql_where=text("state IN ('pending', 'sending')"),
    ),
    Index("ix_notifications_throttle", "rule", "deployment", "channel", "id"),
    Index("ix_notifications_run", "run_id"),
    Index("ix_notifications_created", "created_at"),
)

# Every delivery attempt and its outcome (`orchd notification log`).
notification_attempts = Table(
    "notification_attempts",
    metadata,
    Column("id", BigID, primary_key=True),
    Column("notification_id", BigID, ForeignKey("notifications.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("error", Text),
    Index("ix_notification_attempts_notification", "notification_id", "id"),
)

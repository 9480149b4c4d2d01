"""Initial schema: deployments, schedules, pools, the runs queue, its history, logs, workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from orchd.db.types import BigID, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE = "state IN ('PENDING', 'RUNNING', 'CANCELLING')"


def _partial(where: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}


def _stamps() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("pool", sa.String(128), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("archived_at", UTCDateTime),
        sa.Column("config_hash", sa.String(64), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.UniqueConstraint("name", name="uq_deployments_name"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("deployment_id", sa.Integer, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("expr", sa.Text, nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("anchor", UTCDateTime),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("archived_at", UTCDateTime),
        sa.Column("next_fire_at", UTCDateTime),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            ondelete="CASCADE",
            name="fk_schedules_deployment_id_deployments",
        ),
        sa.UniqueConstraint("deployment_id", "key", name="uq_schedules_deployment_id_key"),
    )
    op.create_index(
        "ix_schedules_due", "schedules", ["next_fire_at"], **_partial("active AND archived_at IS NULL")
    )
    op.create_table(
        "pools",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("concurrency_limit", sa.Integer),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.text("false")),
        *_stamps(),
        sa.PrimaryKeyConstraint("name", name="pk_pools"),
    )
    op.create_table(
        "runs",
        sa.Column("id", BigID, primary_key=True),
        sa.Column("deployment_id", sa.Integer, nullable=False),
        sa.Column("schedule_id", sa.Integer),
        sa.Column("schedule_key", sa.String(64)),
        sa.Column("pool", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("scheduled_for", UTCDateTime, nullable=False),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("lease_expires_at", UTCDateTime),
        sa.Column("claimed_at", UTCDateTime),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("result", sa.JSON),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            ondelete="CASCADE",
            name="fk_runs_deployment_id_deployments",
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"], ["schedules.id"], ondelete="SET NULL", name="fk_runs_schedule_id_schedules"
        ),
        sa.UniqueConstraint("deployment_id", "schedule_key", "scheduled_for", name="uq_runs_schedule_time"),
    )
    op.create_index(
        "ix_runs_due", "runs", ["pool", sa.text("priority DESC"), "due_at"], **_partial("state = 'SCHEDULED'")
    )
    op.create_index("ix_runs_active_lease", "runs", ["lease_expires_at"], **_partial(ACTIVE))
    op.create_index("ix_runs_active_worker", "runs", ["worker"], **_partial(ACTIVE))
    op.create_index("ix_runs_deployment_scheduled", "runs", ["deployment_id", "scheduled_for"])
    op.create_index("ix_runs_finished_at", "runs", ["finished_at"])
    op.create_table(
        "run_states",
        sa.Column("id", BigID, primary_key=True),
        sa.Column("run_id", BigID, nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(255)),
        sa.Column("reason", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_run_states"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_run_states_run_id_runs"
        ),
    )
    op.create_index("ix_run_states_run", "run_states", ["run_id", "id"])
    op.create_table(
        "run_logs",
        sa.Column("id", BigID, primary_key=True),
        sa.Column("run_id", BigID, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_run_logs"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_run_logs_run_id_runs"),
    )
    op.create_index("ix_run_logs_run", "run_logs", ["run_id", "id"])
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("pools", sa.JSON, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("running", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("last_heartbeat", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_workers"),
    )
    op.create_table(
        "schedulers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("last_tick_at", UTCDateTime),
        sa.PrimaryKeyConstraint("name", name="pk_schedulers"),
    )


def downgrade() -> None:
    for table in (
        "schedulers",
        "workers",
        "run_logs",
        "run_states",
        "runs",
        "pools",
        "schedules",
        "deployments",
    ):
        op.drop_table(table)

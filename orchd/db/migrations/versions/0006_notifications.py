"""Notifications: the event log's consumer cursors, the outbox of (rule, event, channel)
deliveries, and every delivery attempt.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from orchd.db.types import BigID, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_DUE = "state IN ('pending', 'sending')"


def upgrade() -> None:
    op.create_table(
        "event_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("gaps", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_event_cursors"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", BigID, nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("event_key", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("deployment", sa.String(128)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("suppressed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.UniqueConstraint("rule", "event_key", "channel", name="uq_notifications_rule_event_key_channel"),
    )
    op.create_index(
        "ix_notifications_due",
        "notifications",
        ["next_attempt_at"],
        sqlite_where=sa.text(_DUE),
        postgresql_where=sa.text(_DUE),
    )
    op.create_index("ix_notifications_throttle", "notifications", ["rule", "deployment", "channel", "id"])
    op.create_index("ix_notifications_run", "notifications", ["run_id"])
    op.create_index("ix_notifications_created", "notifications", ["created_at"])
    op.create_table(
        "notification_attempts",
        sa.Column("id", BigID, nullable=False),
        sa.Column("notification_id", BigID, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name="fk_notification_attempts_notification_id_notifications",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_notification_attempts"),
    )
    op.create_index(
        "ix_notification_attempts_notification", "notification_attempts", ["notification_id", "id"]
    )


def downgrade() -> None:
    op.drop_table("notification_attempts")
    op.drop_table("notifications")
    op.drop_table("event_cursors")

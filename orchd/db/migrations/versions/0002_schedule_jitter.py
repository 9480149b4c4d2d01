"""Schedules get a jitter: runs become due up to this many seconds after their nominal time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("jitter", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("jitter")

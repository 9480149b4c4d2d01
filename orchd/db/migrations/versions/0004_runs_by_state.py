"""Run pages filtered by state stay fast at any history length: a state filter (of all runs, or
of one deployment's) walks the runs of that state newest first instead of the whole history.

At a million runs a page of a rare state (CRASHED, or FAILED of a deployment that never failed)
read every run of the range it filtered: 150 ms on PostgreSQL, 450 ms on SQLite; with these
indexes it reads one page.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_state_scheduled", "runs", ["state", "scheduled_for", "id"])
    op.create_index("ix_runs_deployment_state", "runs", ["deployment_id", "state", "scheduled_for", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_deployment_state", "runs")
    op.drop_index("ix_runs_state_scheduled", "runs")

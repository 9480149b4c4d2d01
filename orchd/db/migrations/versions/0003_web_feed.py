"""For the web dashboard: runs are listed newest first by (scheduled_for, id) at any history
length, and on PostgreSQL every statement that records state changes wakes listeners on
``orchd_events`` (the dashboard's live feed) when it commits.

The trigger is per statement, not per row, and its payload is empty: a transaction notifies at
most once however many runs it moves, and a listener reads what changed from ``run_states`` after
its cursor, so the notification is only a wake-up hint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION orchd_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchd_events', '');
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_index("ix_runs_scheduled", "runs", ["scheduled_for", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)
        op.execute(
            "CREATE TRIGGER orchd_events AFTER INSERT ON run_states "
            "FOR EACH STATEMENT EXECUTE FUNCTION orchd_events_notify()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS orchd_events ON run_states")
        op.execute("DROP FUNCTION IF EXISTS orchd_events_notify()")
    op.drop_index("ix_runs_scheduled", "runs")

"""A run's downstream runs are found by an index of the triggered runs alone: ``uq_runs_upstream``
becomes partial (``upstream_run_id IS NOT NULL``).

The full index held every run, nearly all with a NULL upstream.  SQLite's statistics (ANALYZE,
``PRAGMA optimize``) count those NULLs as one value shared by the whole history, so its planner
judged ``upstream_run_id = ?`` no better than a scan and read every run for each run page: 190 ms
at a million runs.  The partial index holds only triggered runs, the planners use it, every
insert of an untriggered run skips it, and it keeps the same key (NULLs never collided).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TRIGGERED = sa.text("upstream_run_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("uq_runs_upstream", "runs")
    op.create_index(
        "uq_runs_upstream",
        "runs",
        ["upstream_run_id", "deployment_id"],
        unique=True,
        sqlite_where=_TRIGGERED,
        postgresql_where=_TRIGGERED,
    )


def downgrade() -> None:
    op.drop_index("uq_runs_upstream", "runs")
    op.create_index("uq_runs_upstream", "runs", ["upstream_run_id", "deployment_id"], unique=True)

"""Run chains: the ``triggers`` table (the config's ``triggers`` of each deployment) and, on a
triggered run, the upstream run whose end created it, unique per downstream deployment so a run
chain never fires twice for one upstream run.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "triggers",
        sa.Column("upstream_id", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("downstream_id", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["upstream_id"],
            ["deployments.id"],
            name="fk_triggers_upstream_id_deployments",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["downstream_id"],
            ["deployments.id"],
            name="fk_triggers_downstream_id_deployments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upstream_id", "state", "downstream_id", name="pk_triggers"),
    )
    op.add_column("runs", sa.Column("upstream_run_id", sa.BigInteger))
    op.create_index("uq_runs_upstream", "runs", ["upstream_run_id", "deployment_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_runs_upstream", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("upstream_run_id")
    op.drop_table("triggers")

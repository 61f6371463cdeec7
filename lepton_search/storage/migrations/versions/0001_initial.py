"""Initial tables: result cache, nightly runs, frontier snapshots.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lepton_trial_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("trial_number", sa.String(32), nullable=False),
        sa.Column("artifact_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "lepton_nightly_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("run_date", sa.String(10), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("target_trials", sa.Integer, nullable=True),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.UniqueConstraint("study_name", "run_date", name="uq_lepton_nightly_runs_study_date"),
    )
    op.create_table(
        "lepton_frontier_snapshots",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("run_date", sa.String(10), nullable=False),
        sa.Column("frontier", sa.Text, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("study_name", "run_date", name="uq_lepton_frontier_snapshots_study_date"),
    )


def downgrade() -> None:
    op.drop_table("lepton_frontier_snapshots")
    op.drop_table("lepton_nightly_runs")
    op.drop_table("lepton_trial_cache")

"""The budget as numbered slots, so that cooperating drivers never evaluate past it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lepton_budget_slots",
        sa.Column("study_name", sa.String(512), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("driver_id", sa.String(36), nullable=False),
        sa.Column("trial_number", sa.Integer, nullable=True),
        sa.Column("reserved_at", sa.Float, nullable=False),
        sa.UniqueConstraint("study_name", "trial_number", name="uq_lepton_budget_slots_study_trial"),
    )


def downgrade() -> None:
    op.drop_table("lepton_budget_slots")

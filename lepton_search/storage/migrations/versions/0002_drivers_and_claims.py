"""Cooperating drivers: each driver's heartbeat, and one claim per configuration of a study.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lepton_drivers",
        sa.Column("driver_id", sa.String(36), primary_key=True),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_table(
        "lepton_config_claims",
        sa.Column("study_name", sa.String(512), primary_key=True),
        sa.Column("config_hash", sa.String(64), primary_key=True),
        sa.Column("trial_number", sa.Integer, nullable=False),
        sa.Column("driver_id", sa.String(36), nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lepton_config_claims")
    op.drop_table("lepton_drivers")

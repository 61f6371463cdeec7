"""The project's own tables, beside Optuna's in the same database.

Every name starts with ``lepton_`` and the schema is managed by this package's alembic migrations
(``storage/migrations``), whose version is kept in ``lepton_alembic_version``, so neither Optuna's
tables nor its ``alembic_version`` table are ever touched.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

trial_cache = Table(
    "lepton_trial_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("study_name", String(512), nullable=False),
    Column("trial_number", String(32), nullable=False),
    Column("artifact_id", String(64), nullable=True),
    Column("payload", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

nightly_runs = Table(
    "lepton_nightly_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_name", String(512), nullable=False),
    Column("run_date", String(10), nullable=False),
    Column("status", String(16), nullable=False),
    Column("target_trials", Integer, nullable=True),
    Column("manifest", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    UniqueConstraint("study_name", "run_date", name="uq_lepton_nightly_runs_study_date"),
)

frontier_snapshots = Table(
    "lepton_frontier_snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_name", String(512), nullable=False),
    Column("run_date", String(10), nullable=False),
    Column("frontier", Text, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("study_name", "run_date", name="uq_lepton_frontier_snapshots_study_date"),
)

#: Every driver running a study: its heartbeat tells the others that its RUNNING trials are alive.
drivers = Table(
    "lepton_drivers",
    metadata,
    Column("driver_id", String(36), primary_key=True),
    Column("study_name", String(512), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
)

#: Which trial evaluates each configuration of a study: the uniqueness constraint is what keeps
#: two drivers from evaluating one configuration twice.
config_claims = Table(
    "lepton_config_claims",
    metadata,
    Column("study_name", String(512), primary_key=True),
    Column("config_hash", String(64), primary_key=True),
    Column("trial_number", Integer, nullable=False),
    Column("driver_id", String(36), nullable=False),
    Column("claimed_at", Float, nullable=False),
)

#: The study's budget as numbered slots: a driver holds one before it asks for a trial to
#: evaluate, and binds it to that trial's number. The primary key lets exactly one driver hold a
#: slot, so drivers that pass the budget check at the same moment cannot both take the last one.
budget_slots = Table(
    "lepton_budget_slots",
    metadata,
    Column("study_name", String(512), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("driver_id", String(36), nullable=False),
    Column("trial_number", Integer, nullable=True),
    Column("reserved_at", Float, nullable=False),
    UniqueConstraint("study_name", "trial_number", name="uq_lepton_budget_slots_study_trial"),
)

VERSION_TABLE = "lepton_alembic_version"

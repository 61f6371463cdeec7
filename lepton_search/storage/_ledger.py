"""Nightly runs and frontier snapshots, in the project's own tables."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from lepton_search.storage._migrate import engine_for, upgrade
from lepton_search.storage._tables import frontier_snapshots, nightly_runs


class RunLedger:
    """Which nightly runs happened (one per study and date), and the frontier each one saw."""

    def __init__(self, url: str) -> None:
        self._engine = engine_for(url)
        upgrade(self._engine)

    def get_run(self, study_name: str, run_date: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    select(nightly_runs).where(
                        nightly_runs.c.study_name == study_name, nightly_runs.c.run_date == run_date
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return {**dict(row), "manifest": json.loads(row["manifest"])}

    def begin_run(
        self, study_name: str, run_date: str, *, target_trials: int | None, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        """Records the start of tonight's run, or returns the one already recorded for this date."""
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    nightly_runs.insert().values(
                        study_name=study_name,
                        run_date=run_date,
                        status="running",
                        target_trials=target_trials,
                        manifest=json.dumps(manifest),
                        started_at=time.time(),
                    )
                )
        except IntegrityError:
            pass
        run = self.get_run(study_name, run_date)
        assert run is not None  # just inserted or already there
        return run

    def finish_run(self, study_name: str, run_date: str, status: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(nightly_runs)
                .where(nightly_runs.c.study_name == study_name, nightly_runs.c.run_date == run_date)
                .values(status=status, finished_at=time.time())
            )

    def save_snapshot(self, study_name: str, run_date: str, frontier: dict[str, Any], manifest: dict[str, Any]) -> None:
        """Stores tonight's frontier; a rerun on the same date replaces it."""
        values = {"frontier": json.dumps(frontier), "manifest": json.dumps(manifest), "created_at": time.time()}
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(frontier_snapshots)
                .where(frontier_snapshots.c.study_name == study_name, frontier_snapshots.c.run_date == run_date)
                .values(**values)
            ).rowcount
            if not changed:
                conn.execute(frontier_snapshots.insert().values(study_name=study_name, run_date=run_date, **values))

    def last_snapshot(self, study_name: str, before: str) -> dict[str, Any] | None:
        """The newest snapshot of ``study_name`` dated strictly before ``before``."""
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    select(frontier_snapshots)
                    .where(frontier_snapshots.c.study_name == study_name, frontier_snapshots.c.run_date < before)
                    .order_by(frontier_snapshots.c.run_date.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return {
            "run_date": row["run_date"],
            "frontier": json.loads(row["frontier"]),
            "manifest": json.loads(row["manifest"]),
        }

    def dispose(self) -> None:
        self._engine.dispose()

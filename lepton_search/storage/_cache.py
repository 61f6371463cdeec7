"""The result cache: evaluated configurations, kept in the storage's own table.

Rows are keyed by everything that decides a trial's outcome: the task's fingerprint (model and data
recipe), the config hash, and the measurement setup (backend, device, threads, batch size, runtime
version). A study that proposes a configuration already evaluated, in this study or another one in
the same storage, is served from here instead of compressing and measuring again.

The table lives beside Optuna's in the same database but under its own ``lepton_`` name, so the two
never collide; Optuna's schema is never touched.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lepton_search.storage._migrate import engine_for, upgrade
from lepton_search.storage._tables import trial_cache


def cache_key(**parts: Any) -> str:
    """A sha256 over the sorted, JSON-encoded ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ResultCache:
    """Read and write evaluated trial results by key, in the study's database."""

    def __init__(self, url: str) -> None:
        self._engine = engine_for(url)
        upgrade(self._engine)

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached entry for ``key``: ``{"study_name", "trial_number", "artifact_id", "payload"}``."""
        with self._engine.connect() as conn:
            row = conn.execute(select(trial_cache).where(trial_cache.c.key == key)).mappings().first()
        if row is None:
            return None
        return {
            "study_name": row["study_name"],
            "trial_number": int(row["trial_number"]),
            "artifact_id": row["artifact_id"],
            "payload": json.loads(row["payload"]),
        }

    def put(
        self, key: str, *, study_name: str, trial_number: int, artifact_id: str | None, payload: dict[str, Any]
    ) -> None:
        """Stores an entry; the first writer of a key wins."""
        row = {
            "key": key,
            "study_name": study_name,
            "trial_number": str(trial_number),
            "artifact_id": artifact_id,
            "payload": json.dumps(payload),
            "created_at": time.time(),
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(trial_cache.insert().values(**row))
        except IntegrityError:
            pass

    def __len__(self) -> int:
        with self._engine.connect() as conn:
            return len(conn.execute(select(trial_cache.c.key)).all())

    def dispose(self) -> None:
        self._engine.dispose()

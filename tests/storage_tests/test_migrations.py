"""The project's own tables: alembic migrations, apart from Optuna's tables."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from sqlalchemy import inspect

from lepton_search.storage import ResultCache, get_storage
from lepton_search.storage._migrate import current_revision, engine_for, upgrade


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("postgres_url")


def test_migrations_create_only_lepton_tables_beside_optunas(url: str) -> None:
    get_storage(url)  # Optuna's schema first, as in a real study
    engine = engine_for(url)
    optuna_tables = set(inspect(engine).get_table_names())
    assert current_revision(engine) is None
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert current_revision(engine) == "0003"
    added = set(inspect(engine).get_table_names()) - optuna_tables
    assert added == {
        "lepton_alembic_version",
        "lepton_trial_cache",
        "lepton_nightly_runs",
        "lepton_frontier_snapshots",
        "lepton_drivers",
        "lepton_config_claims",
        "lepton_budget_slots",
    }
    # Optuna still opens its storage and sees its own schema version untouched.
    optuna.create_study(storage=get_storage(url), study_name="still-fine")
    engine.dispose()


def test_result_cache_round_trips_and_first_writer_wins(url: str) -> None:
    cache = ResultCache(url)
    cache.put("k", study_name="s", trial_number=3, artifact_id="a", payload={"accuracy": 0.9})
    cache.put("k", study_name="other", trial_number=9, artifact_id="b", payload={"accuracy": 0.1})
    assert cache.get("k") == {"study_name": "s", "trial_number": 3, "artifact_id": "a", "payload": {"accuracy": 0.9}}
    assert cache.get("missing") is None
    assert len(cache) == 1
    cache.dispose()


def test_drivers_that_start_together_migrate_once(url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    get_storage(url)
    code = (
        "import sys, time\n"
        "from lepton_search.storage._migrate import engine_for, upgrade\n"
        "engine = engine_for(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"  # start together
        "upgrade(engine)\n"
    )
    import time

    start = str(time.time() + 3.0)
    processes = [
        subprocess.Popen([sys.executable, "-c", code, url, start], stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors
    engine = engine_for(url)
    assert current_revision(engine) == "0003"
    engine.dispose()
